"""Large specs: `pov plan` of 100,000 cells and a warm `pov retrieve` of 1,000 questions, against a git ref.

    python benchmarks/bench_spec_scale.py --baseline HEAD~3 [--rounds 5]
    pytest benchmarks/bench_spec_scale.py -o python_files='bench_*.py' -s   # POV_BENCH_BASELINE=REF

The spec is the quickstart's shape with 1,000 questions in a 450 KB questions file (each question a few
sentences of the sample corpus): 1,000 questions x 2 templates x 5 personas x 5 POV sets x 2 k schedules =
100,000 cells for `plan`; `retrieve --json` of its 1,000 questions x 2 POV sets x 1 k schedule = 2,000 keys
(stdout discarded). Every entry is a fresh `pov` process timed from outside, as a user runs it; its peak RSS
is read from the kernel (ru_maxrss of the child). The retrieve is warm: the corpus is ingested and every
question and POV statement is in the embedding cache before the first timed round (the set-up runs it once).
A 10-question retrieve of the same spec is timed too, for the memory growth from 10 to 1,000 questions.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from interleave import BENCH_DIR, REPO, baseline_tree, interleave, table

QUESTIONS = 1_000


def questions_yaml(n: int, seed: int = 0) -> str:
    text = " ".join(p.read_text() for p in sorted((REPO / "data" / "brics").glob("0*.md")))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 8 <= len(s.split()) <= 40]
    rng = random.Random(seed)
    lines = ["questions:"]
    for i in range(n):
        body = " ".join(rng.sample(sentences, 3)).replace('"', "'")
        lines += [
            f"  - id: q{i:04d}",
            f'    text: "Given that {body} What follows for BRICS and for the partners it courts?"',
        ]
    return "\n".join(lines) + "\n"


def write_project(root: Path, n_questions: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("# a benchmark project: its state is in .pov/ here\n")
    (root / "questions.yaml").write_text(questions_yaml(n_questions))
    brics = REPO / "data" / "brics"
    spec = root / "spec.yaml"
    spec.write_text(
        "name: bench-scale\n"
        f"corpus: {{path: {brics}, collection: bench-scale, chunking: {{max_words: 180, overlap_words: 30}}}}\n"
        "embedder: {provider: sentence-transformers, model: all-MiniLM-L6-v2}\n"
        "questions: questions.yaml\n"
        "pov_sets:\n"
        f"  global_south: {brics / 'pov_global_south.yaml'}\n"
        f"  security: {brics / 'pov_security.yaml'}\n"
        f"  markets: {brics / 'pov_markets.yaml'}\n"
        "  growth: [Growth is what legitimises a government., Markets reward credible institutions.]\n"
        "  power: [Power follows the ability to set the rules., Sanctions teach states to hedge.]\n"
        "personas:\n"
        + "".join(
            f"  p{i}: You are persona number {i}, an analyst of emerging economies.\n" for i in range(5)
        )
        + "templates:\n"
        f"  summary_opinion: {REPO / 'templates' / 'summary_opinion.j2'}\n"
        f"  opinion_only: {REPO / 'templates' / 'opinion_only.j2'}\n"
        "models:\n"
        "  tiny: {name: 'builtin:tiny-llama', device: cpu}\n"
        "matrix:\n"
        "  k: [[15, 10, 5], [15, 10, 3]]\n"
    )
    return spec


RETRIEVE = ["--set", "matrix.pov_set=[global_south, security]", "--set", "matrix.k=[[15, 10, 5]]"]


def _env(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def pov(code: Path, cwd: Path, *args: str) -> float:
    """Wall seconds of one `pov` process running `code`'s runner (stdout discarded)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "runner.cli", *args],
        cwd=cwd,
        env=_env(code),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"pov {' '.join(args)} ({code}) failed:\n{proc.stderr[-3000:]}")
    return wall


PEAK = (
    # runner.cli.main, not the module as a script: `pov` leaves with os._exit, before this could print.
    "import resource, sys\nfrom runner.cli import main\n"
    "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)\nsys.exit(code)\n"
)


def peak_rss(code: Path, cwd: Path, *args: str) -> float:
    """Peak RSS in MiB of a `pov` process (it reports its own ru_maxrss when done)."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *args],
        cwd=cwd,
        env=_env(code),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pov {' '.join(args)} ({code}) failed:\n{proc.stderr[-3000:]}")
    return float(proc.stderr.strip().splitlines()[-1])


def setup(baseline: str) -> tuple[Path, dict[str, Path]]:
    root = BENCH_DIR / "scale"
    spec = write_project(root, QUESTIONS)
    codes = {"current": REPO, baseline: baseline_tree(baseline)}
    started = time.perf_counter()
    pov(REPO, root, "ingest", str(spec))
    pov(REPO, root, "retrieve", str(spec), "--json", *RETRIEVE)  # embeds every question once
    print(f"set-up (ingest, embed {QUESTIONS} questions): {time.perf_counter() - started:.1f} s", flush=True)
    return spec, codes


def entries(spec: Path, codes: dict[str, Path]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    root = spec.parent
    fns: dict[str, Any] = {}
    for name, code in codes.items():
        fns[f"plan {name}"] = lambda code=code: pov(code, root, "plan", str(spec))
        fns[f"retrieve {name}"] = lambda code=code: pov(
            code, root, "retrieve", str(spec), "--json", *RETRIEVE
        )
    base = next(n for n in codes if n != "current")
    return fns, [("plan current", f"plan {base}"), ("retrieve current", f"retrieve {base}")]


def memory(spec: Path, codes: dict[str, Path]) -> str:
    lines = ["peak RSS of `pov retrieve --json`, MiB"]
    for name, code in codes.items():
        small = peak_rss(
            code,
            spec.parent,
            "retrieve",
            str(spec),
            "--json",
            *RETRIEVE,
            "--set",
            "matrix.question=[" + ", ".join(f"q{i:04d}" for i in range(10)) + "]",
        )
        large = peak_rss(code, spec.parent, "retrieve", str(spec), "--json", *RETRIEVE)
        lines.append(f"{name:>20}: 10 questions {small:7.1f}   {QUESTIONS} questions {large:7.1f}")
    return "\n".join(lines)


def test_plan_and_retrieve(benchmark: Any) -> None:
    from interleave import bench

    baseline = os.environ.get("POV_BENCH_BASELINE", "HEAD")
    spec, codes = setup(baseline)
    fns, pairs = entries(spec, codes)
    benchmark.group = f"plan 100k cells, retrieve 1,000 questions, against {baseline}"
    bench(benchmark, fns, pairs, 5, benchmark.group)
    print(memory(spec, codes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="HEAD", metavar="REF")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    spec, codes = setup(args.baseline)
    fns, pairs = entries(spec, codes)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    times = interleave(fns, args.rounds)
    print(table(times, pairs, f"`pov` process wall time, {args.rounds} interleaved rounds", 1, "s"))
    print(memory(spec, codes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
