"""How long MlflowTracker takes to log 1,000 cells to a fresh sqlite store, with each cell's MLflow trace
(the default) and without (`tracking.traces: false`). Goals on 2 CPU cores: under 30 s without traces,
under 45 s with them.

Each cell is what a real one carries: 9 params, ~40 metrics, ~10 tags, and artifacts of realistic size
(a 4 KB prompt, a 15-chunk context.json with the POV stage's similarities to 7 statements, a 3 KB
answer), logged in batches of 8 as the engine does; its trace holds the same prompt, chunks and answer.
The two are measured interleaved, round after round in one run, so the machine's load hits both alike.

    pytest benchmarks/bench_tracking.py            # pytest-benchmark: one round, then the interleaved rounds
    python benchmarks/bench_tracking.py [N] [R]    # N cells (1,000), R interleaved rounds (2): a table
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
CELLS = 1000
STATEMENTS = [f"Point of view statement number {j}, about alliances and trade." for j in range(7)]
BATCH = 8
MANIFEST = {
    "git": {"commit": "0" * 40, "branch": "main", "dirty": False},
    "gpu": {"name": "none"},
    "versions": {},
    "corpus": {"fingerprint": "bench"},
}


def _results(n: int, traces: bool = True) -> list[Any]:
    from dataclasses import replace

    from runner.run import CellResult
    from runner.spec import expand, load_spec
    from runner.tracking import CHECK_PASS, Tags

    exp = load_spec(ROOT / "experiments" / "tiny.yaml", [f"tracking.traces={str(traces).lower()}"])
    base = expand(exp)
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * 60).strip()
    out = []
    for i in range(n):
        cell = replace(base[i % len(base)], id=f"bench{i:06d}")
        stages = [
            {
                "name": s,
                "ids": [f"doc{j}" for j in range(k)],
                "texts": [words[:900]] * k,
                "scores": [1.0 - j / 30 for j in range(k)],
            }
            for s, k in zip(("vector", "query", "pov"), (15, 10, 5), strict=True)
        ]
        stages[2]["statements"] = STATEMENTS
        stages[2]["similarities"] = [[0.3 - j / 100] * len(STATEMENTS) for j in range(5)]
        metrics = {
            "latency_s": 2.0,
            "prompt_tokens": 900.0,
            "new_tokens": 400.0,
            "tokens_per_s": 200.0,
            "gpu_peak_allocated_mb": 9000.0,
            "gpu_peak_reserved_mb": 9500.0,
            "host_rss_mb": 1800.0,
            "batch_size": 8.0,
            "attempts": 1.0,
        }
        metrics.update({f"complexity_{j}": float(j) for j in range(15)})
        metrics.update({f"check_{j}": 1.0 for j in range(10)})
        crashed = i % 50 == 49
        out.append(
            CellResult(
                cell=cell,
                status="crashed" if crashed else "finished",
                prompt=words[:4000],
                context={"question": cell.question, "stages": stages},
                output=None if crashed else words[:3000],
                cause="cuda_oom" if crashed else None,
                error="OutOfMemoryError" if crashed else None,
                stderr_tail="CUDA out of memory" if crashed else None,
                metrics=metrics,
                tags={Tags.check(f"c{j}"): CHECK_PASS for j in range(6)},
                started_at=time.time(),
                ended_at=time.time(),
            )
        )
    return out, exp  # type: ignore[return-value]


def prepare(n: int, workdir: Path, traces: bool = True) -> tuple[Any, Any, list[Any]]:
    """A tracker on a fresh store whose schema is already created (MLflow's migrations are not timed)."""
    from runner.tracking import MlflowTracker

    results, exp = _results(n, traces)  # type: ignore[misc]
    tracker = MlflowTracker(f"sqlite:///{workdir}/mlflow.db", "bench")
    tracker.client.create_experiment("bench", artifact_location=f"{workdir}/mlruns")
    return tracker, exp, results


def log_all(tracker: Any, exp: Any, results: list[Any]) -> None:
    """What is measured: start an execution, log every cell in batches, finish it."""
    tracker.start(exp, [r.cell for r in results], MANIFEST)
    for i in range(0, len(results), BATCH):
        tracker.log(results[i : i + BATCH])
    tracker.finish({})


def log_cells(n: int = CELLS, traces: bool = True) -> float:
    """Seconds to log `n` cells to a fresh store (its set-up not counted)."""
    with tempfile.TemporaryDirectory(prefix="pov-bench-") as tmp:
        args = prepare(n, Path(tmp), traces)
        started = time.perf_counter()
        log_all(*args)
        return time.perf_counter() - started


ENTRIES = {"with traces": lambda: log_cells(CELLS, True), "without traces": lambda: log_cells(CELLS, False)}
PAIRS = [("with traces", "without traces")]
TITLE = f"logging {CELLS} cells to sqlite, interleaved"


def test_log_1000_cells(benchmark: Any, tmp_path: Path) -> None:
    benchmark.pedantic(log_all, setup=lambda: (prepare(CELLS, tmp_path), {}), rounds=1, iterations=1)
    benchmark.extra_info["cells"] = CELLS


def test_traces_cost_interleaved(benchmark: Any) -> None:
    from interleave import bench

    bench(benchmark, ENTRIES, PAIRS, rounds=2, title=TITLE)


if __name__ == "__main__":
    import os

    from interleave import interleave, table

    n = int(sys.argv[1]) if len(sys.argv) > 1 else CELLS
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    entries = {"with traces": lambda: log_cells(n, True), "without traces": lambda: log_cells(n, False)}
    times = interleave(entries, rounds, warmup=0)
    print(table(times, PAIRS, f"logging {n} cells to sqlite, interleaved", unit=1.0, unit_name=" s"))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
