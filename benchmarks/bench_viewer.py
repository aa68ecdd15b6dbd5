"""`pov view` at 18 and 1,000 cells: how long building the page takes, how large it is, and, in real headless
Chromium (Playwright), the time to first render, to apply a filter, to search the answers and to open a cell
(each timed inside the page: from navigation start, or from the change to the page drawn again).

Each execution is logged by the real tracker into a fresh sqlite store (not timed): cells over 50
questions x 2 templates x 2 personas x 5 POV sets (1,000) or 3 x 2 x 1 x 3 (18), each with a ~4 KB prompt,
a ~1.5 KB answer, three stages of 15/10/5 chunks cut from the BRICS corpus, one crash in 50. Then `pov view`'s
own code reads it back and writes view.html (timed: "build"), and the browser opens it from file:// with the
network off, ROUNDS times.

    python benchmarks/bench_viewer.py            # both sizes: a table
    pytest benchmarks/bench_viewer.py -s         # the same under pytest-benchmark
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from headless import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

SIZES = (18, 1000)
ROUNDS = 3
POV_SETS = ["global_south", "security", "markets", "trade", "energy"]


def chunks() -> list[tuple[str, str]]:
    """(id, text) of the corpus's paragraphs of 40 words or more."""
    out = []
    for f in sorted((ROOT / "data" / "brics").glob("0*.md")):
        for para in f.read_text(encoding="utf-8").split("\n\n"):
            text = " ".join(para.split())
            if len(text.split()) >= 40:
                out.append((hashlib.sha256(text.encode()).hexdigest()[:32], text))
    return out


def results(n: int) -> tuple[Any, list[Any]]:
    from dataclasses import replace

    from runner.run import CellResult
    from runner.spec import expand, load_spec

    exp = load_spec(ROOT / "experiments" / "tiny.yaml", ["tracking.traces=false"])
    base = expand(exp)[0]
    pool = chunks()
    shape = (50, 2, 2, 5) if n >= 1000 else (3, 2, 1, 3)
    statements = [f"Statement {j} of a point of view on alliances, money and trade." for j in range(7)]
    out = []
    for i in range(n):
        q, rest = divmod(i, shape[1] * shape[2] * shape[3])
        t, rest = divmod(rest, shape[2] * shape[3])
        p, s = divmod(rest, shape[3])
        cell = replace(
            base,
            id=hashlib.sha256(f"cell{i}".encode()).hexdigest()[:12],
            question=f"q{q:02d}",
            template=("summary_opinion", "opinion_only")[t],
            persona=("professor", "assistant")[p],
            pov_set=POV_SETS[s],
        )
        picked = [pool[(7 * i + 3 * j) % len(pool)] for j in range(15)]
        s2 = picked[:10][::-1]
        s3 = s2[1:6]
        stages = [
            {
                "name": name,
                "ids": [c[0] for c in got],
                "texts": [c[1] for c in got],
                "scores": [0.9 - j / 40 for j in range(len(got))],
            }
            for name, got in (("vector", picked), ("query", s2), ("pov", s3))
        ]
        stages[2] |= {"statements": statements, "similarities": [[0.4 - j / 50] * 7 for j in range(5)]}
        crashed = i % 50 == 49
        answer = f"## Context Summary:\n{s3[0][1][:500]}\n\n## Opinion:\n" + " ".join(
            f"In my view point {k} of question {q} matters because of {s3[k % 5][1][:120]}." for k in range(6)
        )
        out.append(
            CellResult(
                cell=cell,
                status="crashed" if crashed else "finished",
                prompt=("You are a professor. Answer from the passages.\n\n" + "\n\n".join(c[1] for c in s3))[
                    :4000
                ],
                context={
                    "question": cell.question,
                    "pov_set": cell.pov_set,
                    "k": [15, 10, 5],
                    "stages": stages,
                },
                output=None if crashed else answer,
                cause="segfault" if crashed else None,
                error="worker died: SIGSEGV" if crashed else None,
                stderr_tail="Fatal Python error: Segmentation fault\n" * 5 if crashed else None,
                metrics={
                    "latency_s": 2.0 + (i % 7) / 3,
                    "prompt_tokens": 900.0 + i % 300,
                    "new_tokens": 300.0,
                    "tokens_per_s": 150.0,
                    "check_pov_retention": 0.6 + (i % 9) / 20,
                    "check_copied_share": (i % 11) / 20,
                    "check_dup_overlap": (i % 5) / 10,
                },
                tags={
                    "check.sections": "pass",
                    "check.idk": "pass",
                    "check.degenerate": "pass",
                    "check.pov_retention": "pass" if i % 9 > 2 else "fail",
                    "check.copied": "pass" if i % 11 < 8 else "fail",
                },
                started_at=time.time(),
                ended_at=time.time(),
            )
        )
    return exp, out


def make_store(n: int, folder: Path) -> tuple[str, str]:
    """A sqlite store holding one execution of `n` cells; (tracking URI, its run id)."""
    from runner.tracking import MlflowTracker

    exp, got = results(n)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "bench-view")
    tracker.client.create_experiment("bench-view", artifact_location=str(folder / "mlruns"))
    tracker.start(exp, [r.cell for r in got], {"git": {}, "gpu": {}, "versions": {}, "corpus": {}})
    for i in range(0, len(got), 8):
        tracker.log(got[i : i + 8])
    tracker.finish({})
    assert tracker.run_id is not None
    return uri, tracker.run_id


def build(uri: str, run_id: str, out: Path) -> tuple[Path, float]:
    """What `pov view --run` does, timed: read the execution back and write the page."""
    from runner.report import load_execution, load_views, write_view
    from runner.tracking import make_client

    started = time.perf_counter()
    client = make_client(uri, must_exist=True)
    ex = load_execution(client, run_id)
    views, chunk_texts = load_views(client, [ex])
    page = write_view(views, chunk_texts, out, "bench")
    return page, time.perf_counter() - started


def in_browser(page_path: Path, rounds: int = ROUNDS) -> dict[str, float]:
    """Median milliseconds over `rounds` fresh pages: first render, a filter, a search, opening a cell."""
    from playwright.sync_api import sync_playwright

    got: dict[str, list[float]] = {"first render": [], "filter": [], "search": [], "open cell": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(rounds):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_offline(True)
            page = context.new_page()
            page.goto(page_path.as_uri())
            page.wait_for_selector("body[data-ready]")
            got["first render"].append(
                page.evaluate("performance.getEntriesByName('pov-first-render')[0].startTime")
            )
            for name, hash_ in (("filter", "template=opinion_only"), ("search", "q=matters%20because")):
                got[name].append(
                    page.evaluate(
                        """async (h) => {
                      const done = new Promise((r) => addEventListener('hashchange', () => r(), {once: true}));
                      const t = performance.now(); location.hash = h; await done;
                      return performance.now() - t; }""",
                        hash_,
                    )
                )
            # Opening a cell redraws only its panel, synchronously: timed inside the page, as the others.
            got["open cell"].append(
                page.evaluate(
                    """() => { const t = performance.now(); document.querySelector('.card.finished').click();
                           if (!document.querySelector('.panel table.stage')) throw new Error('no panel');
                           return performance.now() - t; }"""
                )
            )
            context.close()
        browser.close()
    return {k: statistics.median(v) for k, v in got.items()}


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pov-bench-view-") as tmp:
        folder = Path(tmp)
        uri, run_id = make_store(n, folder)
        page, seconds = build(uri, run_id, folder / "page")
        return {"cells": n, "page MB": page.stat().st_size / 1e6, "build s": seconds, **in_browser(page)}


def table(rows: list[dict[str, float]]) -> str:
    cols = ["cells", "page MB", "build s", "first render", "filter", "search", "open cell"]
    lines = ["  ".join(f"{c:>12}" for c in cols) + f"   (browser: ms, median of {ROUNDS})"]
    for r in rows:
        lines.append(
            "  ".join(f"{r[c]:>12.2f}" if c in ("page MB", "build s") else f"{r[c]:>12.0f}" for c in cols)
        )
    return "\n".join(lines)


def test_viewer_page(benchmark: Any) -> None:
    rows: list[dict[str, float]] = []
    benchmark.pedantic(lambda: rows.extend(measure(n) for n in SIZES), rounds=1, iterations=1)
    benchmark.extra_info["pages"] = rows
    print("\n" + table(rows))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    rows = [measure(n) for n in SIZES]
    print(table(rows))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
