"""One model group of 24 cells on a Ray cluster offering 3 GPU slots (logical GPUs, on the CPU): shared out
over 3 actors (`executor.split_groups`, the default) against one actor (`executor.workers: 1`), interleaved
round by round in one process, on one local Ray (`ray.init(num_cpus=3, num_gpus=3)`).

Two backends:
- `standin`: a stand-in for a GPU (benchmarks/standin_backend.py: it sleeps per new token, as a host waits on
  its GPU), so the actors run truly in parallel even on a 2-core machine: the figure a GPU cluster would show;
- `tiny`: the tiny random Llama on the CPU, for real: bounded by the machine's cores (each actor has one).

Per entry: the executor's wall time (actor start and model load included), and the span from the first
batch's start to the last batch's end (generation alone).

    python benchmarks/bench_ray_split.py [--rounds 2] [--tokens 48] [--s-per-token 0.25]
    pytest benchmarks/bench_ray_split.py -o python_files='bench_*.py' -s
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _jobs(tokens: int) -> tuple[Any, list[Any]]:
    from conftest import StubRetriever, gen_spec  # type: ignore[import-not-found]

    from runner.generation.tinymodel import build_tiny
    from runner.run.engine import job_for
    from runner.run.prepare import prepare, retrieval_keys
    from runner.spec import expand, load_spec

    tmp = Path(tempfile.mkdtemp(prefix="pov-bench-ray-"))
    model_dir = build_tiny(tmp / "tiny", seed=0)
    spec = gen_spec(tmp, model_dir, questions=4, personas=2, pov_sets=3, limits="{cell_timeout_s: 600}")
    exp = load_spec(
        spec,
        [
            f"generation.max_new_tokens={tokens}",
            f"generation.min_new_tokens={tokens}",
            "generation.batch_size=8",
        ],
    )
    cells = expand(exp)
    assert len(cells) == 24
    prepared = prepare(exp, cells, StubRetriever().retrieve(retrieval_keys(cells)))
    return exp, [job_for(exp, p) for p in prepared.values()]


def run_once(exp: Any, jobs: list[Any], backend: str, workers: int | None) -> tuple[float, float, int]:
    """(wall s, generation span s, actors that answered) of one executor run."""
    from runner.generation.executors.ray import RayExecutor
    from runner.spec import Executor

    model = exp.spec.models["tiny"]
    if backend == "standin":
        model = model.model_copy(update={"backend": "standin_backend:StandinBackend"})
    results: list[Any] = []
    executor = RayExecutor(Executor(kind="ray", workers=workers), exp.spec.limits)
    started = time.perf_counter()
    executor.run({"tiny": (model, list(jobs))}, exp.spec.generation, results.extend)
    wall = time.perf_counter() - started
    assert len(results) == 24 and all(r.status == "finished" for r in results), [r.error for r in results]
    span = max(r.ended_at for r in results) - min(r.started_at for r in results)
    return wall, span, len(set(executor.placed.values()))


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--s-per-token", type=float, default=0.25, help="the stand-in GPU's decode step")
    args = parser.parse_args(argv)
    os.environ["POV_STANDIN_S_PER_TOKEN"] = str(args.s_per_token)
    import ray

    ray.init(
        num_cpus=3,
        num_gpus=3,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": f"{REPO}:{BENCH}",
                "POV_STANDIN_S_PER_TOKEN": str(args.s_per_token),
            }
        },
    )
    try:
        exp, jobs = _jobs(args.tokens)
        entries = {
            (backend, label): (backend, workers)
            for backend in ("standin", "tiny")
            for label, workers in (("3 actors (split)", None), ("1 actor", 1))
        }
        got: dict[str, dict[str, list[float]]] = {
            f"{b} · {lab}": {"wall": [], "span": [], "actors": []} for b, lab in entries
        }
        for r in range(args.rounds):
            order = list(entries.items())
            order = order[r % len(order) :] + order[: r % len(order)]
            for (backend, label), (b, workers) in order:
                wall, span, actors = run_once(exp, jobs, b, workers)
                row = got[f"{backend} · {label}"]
                row["wall"].append(wall)
                row["span"].append(span)
                row["actors"].append(actors)
        print(f"\n24 cells, batch 8, {args.tokens} new tokens, {args.rounds} interleaved rounds (median s)")
        print(f"{'entry':>30} {'actors':>6} {'wall':>8} {'generation':>11}")
        for name, row in got.items():
            print(
                f"{name:>30} {max(row['actors']):>6.0f} {statistics.median(row['wall']):>8.1f} {statistics.median(row['span']):>11.1f}"
            )
        for backend in ("standin", "tiny"):
            split, one = got[f"{backend} · 3 actors (split)"], got[f"{backend} · 1 actor"]
            w = [a / b for a, b in zip(split["wall"], one["wall"], strict=True)]
            g = [a / b for a, b in zip(split["span"], one["span"], strict=True)]
            print(
                f"{backend}: split / one actor: wall {statistics.median(w):.2f} (min {min(w):.2f}, max {max(w):.2f}), generation {statistics.median(g):.2f}"
            )
        return got
    finally:
        ray.shutdown()


def test_split_group_over_three_actors(benchmark: Any) -> None:
    got = benchmark.pedantic(main, args=(["--rounds", "1"],), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v["wall"] for k, v in got.items()})


if __name__ == "__main__":
    main()
