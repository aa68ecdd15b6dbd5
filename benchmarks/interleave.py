"""Side-by-side timing for the benchmarks: every entry once per round, round after round, in one run, so that a
shared machine's drifting load hits all of them alike (one pytest-benchmark test after another does not), and
the code as it was at a git ref, extracted beside the working tree, as an entry of its own.

    from interleave import baseline_tree, cpu_hogs, interleave, table

`interleave` returns seconds per entry per round; `table` prints each entry's min and median, and for each
named pair (entry, reference) the median, min and max of its per-round ratios. `bench(benchmark, ...)` runs the same rounds under
pytest-benchmark (each benchmark round is one interleaved round of every entry) and stores the per-entry
figures and ratios in `extra_info`, so `--benchmark-json` keeps them.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".pov" / "bench"

Entry = Callable[[], Any]
"""One measurement: its wall time is taken around the call, unless it returns a float, which is then the
seconds it measured itself (a subprocess reporting its own phase, say)."""


def baseline_tree(ref: str) -> Path:
    """The repository's tracked files at `ref`, extracted once into .pov/bench/baseline-<commit>/ (git
    ignores .pov): put it first on PYTHONPATH to run that version of the runner."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = BENCH_DIR / f"baseline-{sha[:12]}"
    if (dest / "runner" / "__init__.py").exists():
        return dest
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        archive = Path(tmp) / "tree.tar"
        subprocess.run(["git", "archive", "-o", str(archive), sha], cwd=REPO, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "tree", filter="data")
        (Path(tmp) / "tree").rename(dest)
    return dest


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`n` processes spinning on a core each for the duration (a busy machine on demand); all killed after."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.2 if procs else 0)  # let them take their cores
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _once(fn: Entry) -> float:
    started = time.perf_counter()
    got = fn()
    took = time.perf_counter() - started
    return float(got) if isinstance(got, float) else took


def round_order(names: list[str], r: int) -> list[str]:
    """Round `r`'s order: a shuffle seeded by the round, so that no entry always runs first (after an idle
    moment) or right after the same neighbour. Rotating one list would keep every entry's neighbour: an entry
    after the notebook loop, which leaves the caches cold, paid for that in every round."""
    order = list(names)
    random.Random(r).shuffle(order)
    return order


def interleave(entries: dict[str, Entry], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per entry per round. Each round runs every entry once, in its own order (`round_order`)."""
    names = list(entries)
    for _ in range(warmup):
        for name in names:
            entries[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in round_order(names, r):
            times[name].append(_once(entries[name]))
    return times


def ratios(times: dict[str, list[float]], entry: str, reference: str) -> list[float]:
    """Per-round ratio entry / reference (each pair measured in the same round)."""
    return [a / b for a, b in zip(times[entry], times[reference], strict=True)]


Pairs = list[tuple[str, str]]
"""(entry, reference): each pair's per-round ratio entry / reference is reported."""


def figures(times: dict[str, list[float]], pairs: Pairs) -> dict[str, dict[str, float]]:
    """Per entry its min and median seconds; per pair `A / B` the median, min and max of its per-round
    ratios."""
    out: dict[str, dict[str, float]] = {
        name: {"min_s": min(ts), "median_s": statistics.median(ts)} for name, ts in times.items()
    }
    for a, b in pairs:
        rs = ratios(times, a, b)
        out[f"{a} / {b}"] = {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}
    return out


def table(
    times: dict[str, list[float]], pairs: Pairs, title: str, unit: float = 1e3, unit_name: str = "ms"
) -> str:
    got = figures(times, pairs)
    lines = [title, f"{'entry':>34} {'min':>11} {'median':>11}"]
    lines += [
        f"{name:>34} {got[name]['min_s'] * unit:>9.3f}{unit_name} {got[name]['median_s'] * unit:>9.3f}{unit_name}"
        for name in times
    ]
    if pairs:
        lines.append(f"{'ratio (per round)':>34} {'median':>11} {'min':>8} {'max':>8}")
        for a, b in pairs:
            r = got[f"{a} / {b}"]
            lines.append(f"{a + ' / ' + b:>34} {r['median']:>11.3f} {r['min']:>8.3f} {r['max']:>8.3f}")
    return "\n".join(lines)


def bench(
    benchmark: Any, entries: dict[str, Entry], pairs: Pairs, rounds: int, title: str
) -> dict[str, list[float]]:
    """The interleaved rounds under pytest-benchmark: one benchmark round is one round of every entry. The
    per-entry figures go to `benchmark.extra_info` and the table to stdout (`-s` shows it)."""
    names = list(entries)
    times: dict[str, list[float]] = {name: [] for name in names}
    counter = iter(range(10**9))

    def one_round() -> None:
        for name in round_order(names, next(counter)):
            times[name].append(_once(entries[name]))

    for name in names:  # warm-up, outside the timing
        entries[name]()
    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    benchmark.extra_info["interleaved"] = figures(times, pairs)
    print("\n" + table(times, pairs, title))
    return times
