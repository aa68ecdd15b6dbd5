"""The quickstart matrix with the real model, two ways: SmolLM2-135M-Instruct in a transformers worker (the
quickstart as shipped) against the same model's GGUF in a llama.cpp server pov-runner starts (backend
openai, `server:`), interleaved round by round in one process so that both meet the same machine load.

    python benchmarks/bench_servers.py                    # 2 rounds each, the 16 quickstart cells
    python benchmarks/bench_servers.py --rounds 3 --json out.json --set generation.max_new_tokens=64

Each round is a fresh, untracked `run_experiment` of every cell (the corpus index and the retriever are made
once, before the first round). Reported per round: the run's wall time, the time inside generation (from
the first batch sent to the last result), the tokens generated (the backend's own count), tokens/s over
the generation time, and tokens per CPU-second of the process that generated (the worker or the server:
children of this process, reaped at the end of each round, so `RUSAGE_CHILDREN` holds their CPU time). On a
loaded machine the CPU-seconds figure is the steadier one: wall time counts the time other processes took.

Both sides get the same CPU: the transformers worker uses every core but one (runner.generation.worker),
and the server as many threads (runner.generation.llamacpp_server.default_threads). Nothing here asserts a
time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "experiments" / "quickstart.yaml"
LLAMACPP = [
    "models.smollm2.backend=openai",
    "models.smollm2.name=smollm2",
    "models.smollm2.device=auto",
    "models.smollm2.max_concurrency=8",
    'models.smollm2.server={gguf: "builtin:smollm2-135m-instruct"}',
]
"""The quickstart's model entry, moved to a managed llama.cpp server (same weights, same cells)."""


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_round(exp: Any, retriever: Any) -> dict[str, float]:
    from runner.run import NullTracker
    from runner.run.engine import run_experiment
    from runner.run.sinks import read_results
    from runner.spec import expand

    cpu, started = children_cpu_s(), time.monotonic()
    summary = run_experiment(exp, expand(exp), NullTracker(), retriever=retriever, quiet=True, fresh=True)
    wall = time.monotonic() - started
    cpu = children_cpu_s() - cpu
    results = read_results(summary.results_path).values()
    tokens = sum(r["metrics"].get("new_tokens", 0.0) for r in results if r["status"] == "finished")
    generation = summary.phases.get("generation", wall)
    return {
        "cells_finished": float(summary.finished),
        "cells_crashed": float(summary.crashed),
        "wall_s": wall,
        "generation_s": generation,
        "new_tokens": tokens,
        "tokens_per_s": tokens / generation if generation > 0 else 0.0,
        "cpu_s": cpu,
        "tokens_per_cpu_s": tokens / cpu if cpu > 0 else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per backend, interleaved (2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a spec override")
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from runner.retrieval import open_retriever
    from runner.spec import load_spec

    variants = {
        "transformers (worker)": load_spec(SPEC, args.set),
        "llama.cpp server (managed)": load_spec(SPEC, [*LLAMACPP, *args.set]),
    }
    first = next(iter(variants.values()))
    retriever = open_retriever(first)  # one index and one retriever: both variants retrieve the same
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    load: list[float] = []
    for i in range(args.rounds):
        for name, exp in variants.items():
            load.append(os.getloadavg()[0])
            figures = one_round(exp, retriever)
            rounds[name].append(figures)
            print(
                f"round {i + 1} {name}: {json.dumps({k: round(v, 2) for k, v in figures.items()})}",
                flush=True,
            )
    print(f"\nload average (1 min) at the start of each round: {', '.join(f'{x:.1f}' for x in load)}")
    print(f"cores: {os.cpu_count()}\n")
    print("| backend | wall s | generation s | new tokens | tokens/s | tokens per CPU-s |")
    print("|---|---|---|---|---|---|")
    for name, figures in rounds.items():

        def med(key: str, figures: list[dict[str, float]] = figures) -> float:
            return statistics.median(f[key] for f in figures)

        print(
            f"| {name} | {med('wall_s'):.1f} | {med('generation_s'):.1f} | {med('new_tokens'):.0f} | "
            f"{med('tokens_per_s'):.1f} | {med('tokens_per_cpu_s'):.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "load": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
