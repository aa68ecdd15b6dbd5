"""The tiny-model quickstart as a user runs it again: `pov run SPEC --fresh --no-track`, a fresh process each
time, against the code at a git ref. How much of its wall time is spent outside `model.generate`?

    python benchmarks/bench_quickstart.py --baseline HEAD~3 [--rounds 10] [--profile]
    pytest benchmarks/bench_quickstart.py -o python_files='bench_*.py' -s     # POV_BENCH_BASELINE=REF

The spec is benchmarks/specs/quickstart_tiny.yaml (18 cells, 48 new tokens each, MiniLM, the tiny Llama on
the CPU), copied into a project of its own per version (.pov/bench/quickstart-<name>/), so that each keeps
its own store, caches and run folders. A first run per version (not timed) builds the tiny model, ingests
the corpus and fills the embedding cache, so every timed run is a warm one. Per run: the process's wall
time, measured from outside, and the seconds inside `model.generate` (the run's summary.json,
`generate_time_s`); the share outside is 1 - generate / wall. Rounds interleave the versions.

--profile runs each version once more under py-spy (when installed) and prints a timeline of the parent's
and the worker's main threads: where the time outside `model.generate` goes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from interleave import BENCH_DIR, REPO, baseline_tree, interleave

SPEC = Path(__file__).resolve().parent / "specs" / "quickstart_tiny.yaml"


class Version:
    def __init__(self, name: str, code: Path) -> None:
        self.name, self.code = name, code
        self.dir = BENCH_DIR / f"quickstart-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "pyproject.toml").write_text("# a benchmark project: its state is in .pov/ here\n")
        self.spec = self.dir / "spec.yaml"
        self.spec.write_text(SPEC.read_text().replace("../../", f"{REPO}/"))
        self.runs: list[dict[str, float]] = []

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(self.code), "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        return env

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "runner.cli", "run", str(self.spec), "--fresh", "--no-track", "--quiet"]

    def run(self) -> float:
        started = time.perf_counter()
        proc = subprocess.run(self.argv(), cwd=self.dir, env=self.env(), capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or "18 finished" not in proc.stdout:
            raise RuntimeError(f"{self.name}: pov run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        results = Path(proc.stdout.split("results: ")[1].split()[0])
        summary = json.loads((results.parent / "summary.json").read_text())
        generate = float(summary["generate_time_s"])
        self.runs.append({"wall_s": wall, "generate_s": generate, "outside": 1 - generate / wall})
        return wall

    def profile(self) -> None:
        if shutil.which("py-spy") is None:
            print("py-spy is not installed: no profile")
            return
        out = self.dir / "profile.json"
        subprocess.run(
            [
                "py-spy",
                "record",
                "--subprocesses",
                "--idle",
                "-r",
                "100",
                "-f",
                "speedscope",
                "-o",
                str(out),
                "--",
                *self.argv(),
            ],
            cwd=self.dir,
            env=self.env(),
            capture_output=True,
            check=True,
        )
        print(f"--- {self.name}: timeline (0.25 s buckets) of each process's main thread")
        print(timeline(out))


def timeline(path: Path, bucket: float = 0.25) -> str:
    """Per process main thread and bucket: the deepest runner frame and the package it is in, most seen."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]

    def label(stack: list[int]) -> str:
        mine, package = "", ""
        for i in stack:
            f = frames[i]
            file = f.get("file", "")
            if "/runner/" in file and "site-packages" not in file:
                mine = f"{f.get('name')} ({file.split('/runner/')[-1]}:{f.get('line')})"
            if not package and "site-packages/" in file:
                package = file.split("site-packages/")[1].split("/")[0]
        return f"{mine} -> {package}" if package else mine or "(interpreter)"

    lines = []
    for prof in data["profiles"]:
        ids = re.match(r"Process (\d+) Thread (\d+)", prof["name"])
        if ids is None or ids.group(1) != ids.group(2):  # main threads only
            continue
        t = 0.0
        buckets: dict[int, dict[str, float]] = {}
        for stack, w in zip(prof["samples"], prof["weights"], strict=True):
            buckets.setdefault(int(t // bucket), {}).setdefault(label(stack), 0.0)
            buckets[int(t // bucket)][label(stack)] += w
            t += w
        lines.append(f"{prof['name']}: {t:.2f} s")
        previous = None
        for b in sorted(buckets):
            top = max(buckets[b].items(), key=lambda kv: kv[1])[0]
            if top != previous:
                lines.append(f"  {b * bucket:6.2f} s  {top}")
            previous = top
    return "\n".join(lines)


def setup(baseline: str) -> list[Version]:
    versions = [Version("current", REPO), Version(baseline, baseline_tree(baseline))]
    for v in versions:
        started = time.perf_counter()
        v.run()  # builds the tiny model, ingests, fills the caches
        v.runs.clear()
        print(f"set-up {v.name}: {time.perf_counter() - started:.1f} s", flush=True)
    return versions


def report(versions: list[Version]) -> str:
    current, base = versions
    lines = [
        f"{'version':>12} {'wall med':>9} {'generate med':>13} {'outside med':>12} {'outside range':>16}"
    ]
    for v in versions:
        walls = [r["wall_s"] for r in v.runs]
        gens = [r["generate_s"] for r in v.runs]
        out = [r["outside"] for r in v.runs]
        lines.append(
            f"{v.name:>12} {statistics.median(walls):8.2f}s {statistics.median(gens):12.2f}s "
            f"{statistics.median(out):11.1%} {min(out):7.1%}-{max(out):6.1%}"
        )
    pairs = [a["outside"] / b["outside"] for a, b in zip(current.runs, base.runs, strict=True)]
    walls = [a["wall_s"] / b["wall_s"] for a, b in zip(current.runs, base.runs, strict=True)]
    lines.append(
        f"share outside generate, current / {base.name}, per round: median {statistics.median(pairs):.3f} "
        f"[{min(pairs):.3f}, {max(pairs):.3f}]; wall time: median {statistics.median(walls):.3f}"
    )
    return "\n".join(lines)


def test_quickstart(benchmark: Any) -> None:
    from interleave import bench

    baseline = os.environ.get("POV_BENCH_BASELINE", "HEAD")
    versions = setup(baseline)
    benchmark.group = f"quickstart tiny model, against {baseline}"
    fns = {f"run {v.name}": v.run for v in versions}
    bench(benchmark, fns, [("run current", f"run {baseline}")], 5, benchmark.group)
    print(report(versions))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="HEAD", metavar="REF")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    versions = setup(args.baseline)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    interleave({v.name: v.run for v in versions}, args.rounds, warmup=0)
    print(report(versions))
    if args.profile:
        for v in versions:
            v.profile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
