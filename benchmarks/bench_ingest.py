"""Re-ingest of a 50,000-chunk corpus: nothing changed, and one file edited, against the code at a git ref.

    python benchmarks/bench_ingest.py --baseline HEAD~3              # 500 files x 100 chunks, 5 rounds
    python benchmarks/bench_ingest.py --baseline HEAD~3 --files 50   # a 5,000-chunk corpus, to try it out
    pytest benchmarks/bench_ingest.py -o python_files='bench_*.py' -s  # the same under pytest-benchmark
                                                                     # (POV_BENCH_BASELINE=REF, default HEAD)

Each entry is a fresh `pov ingest spec.yaml --json` process, as a user runs it, timed from outside (its wall
time, imports included); the in-process time of loading the spec and ingesting is printed too. The working
tree and the baseline each ingest into a project of their own (.pov/bench/ingest-<name>/: a copy of the
corpus, its Chroma store, its embedding cache), since they may store chunk metadata differently. Each round
runs, for each of them: `no-change` (the corpus as it is) and `edit` (one file gets a sentence never seen
before, so one chunk is new and is embedded for real by MiniLM, and its old chunk deleted). The edit itself
is not timed.

The corpus: 500 files of 100 paragraphs of 140-170 words of English prose, drawn with a fixed seed from a
pool of 2,000 paragraphs built from the sentences of data/brics; each paragraph is one chunk (max_words 180),
so 50,000 chunks whose texts repeat across files: the pool is embedded once (the first set-up takes a few
minutes for that and the first ingests), and then every text is in the embedding cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from interleave import BENCH_DIR, REPO, baseline_tree, interleave, table

POOL, WORDS = 2_000, (140, 170)
SCRIPT = """
import json, sys, time
started = time.perf_counter()
from runner.spec import load_spec
from runner.retrieval import ingest
report = ingest(load_spec(sys.argv[1]))
print(json.dumps({"ingest_s": time.perf_counter() - started, "chunks": report.chunks, "files": report.files}))
"""


def paragraphs(seed: int = 0) -> list[str]:
    """POOL paragraphs of WORDS words, sentences of the sample corpus drawn with `seed`."""
    text = " ".join(p.read_text() for p in sorted((REPO / "data" / "brics").glob("0*.md")))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 6]
    rng = random.Random(seed)
    out = []
    for _ in range(POOL):
        want, words = rng.randint(*WORDS), []
        while len(words) < want:
            words += rng.choice(sentences).split()
        out.append(" ".join(words[:want]).rstrip(".,;:") + ".")
    return out


def make_corpus(dest: Path, files: int, per_file: int, seed: int = 0) -> None:
    pool = paragraphs(seed)
    rng = random.Random(seed + 1)
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        picked = rng.sample(pool, per_file)
        (dest / f"doc{i:04d}.md").write_text("\n\n".join(picked) + "\n")


def write_spec(project: Path) -> Path:
    # A project of its own (its own .pov/), not a folder of the repository's project.
    (project / "pyproject.toml").write_text("# a benchmark project: its state is in .pov/ here\n")
    (project / "t.j2").write_text("{{ persona }} {{ context }} {{ question }}\n")
    spec = project / "spec.yaml"
    spec.write_text(
        "name: bench-ingest\n"
        "corpus: {path: corpus, collection: bench-ingest, chunking: {max_words: 180, overlap_words: 30}}\n"
        "embedder: {provider: sentence-transformers, model: all-MiniLM-L6-v2}\n"
        "questions: [{id: q1, text: 'What drives BRICS expansion?'}]\n"
        "pov_sets: {s: [Alliances are insurance bought before the storm.]}\n"
        "personas: {a: You are an analyst.}\n"
        "templates: {t: t.j2}\n"
        "models: {tiny: {name: 'builtin:tiny-llama', device: cpu}}\n"
    )
    return spec


class Project:
    """One version of the runner and its own copy of the corpus and store."""

    def __init__(self, name: str, code: Path, corpus: Path, files: int) -> None:
        self.name, self.code = name, code
        self.dir = BENCH_DIR / f"ingest-{files}-{name}"
        self.spec = self.dir / "spec.yaml"
        self.in_process: list[float] = []
        self.edits = 0
        if not (self.dir / "corpus").exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(corpus, self.dir / "corpus")
        write_spec(self.dir)

    def ingest(self) -> dict[str, Any]:
        env = {
            **os.environ,
            "PYTHONPATH": str(self.code),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(self.spec)],
            cwd=self.dir,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: ingest failed:\n{proc.stderr[-3000:]}")
        got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        got["wall_s"] = wall
        return got

    def no_change(self) -> float:
        got = self.ingest()
        assert got["chunks"]["added"] == 0 and got["chunks"]["deleted"] == 0, got
        self.in_process.append(got["ingest_s"])
        return float(got["wall_s"])

    def edit(self) -> float:
        self.edits += 1
        target = self.dir / "corpus" / "doc0000.md"
        paras = target.read_text().split("\n\n")
        paras[0] = (
            paras[0].split(" Edit number")[0] + f" Edit number {self.edits} of {self.name} {time.time_ns()}."
        )
        target.write_text("\n\n".join(paras))
        got = self.ingest()
        assert got["chunks"]["added"] == 1 and got["chunks"]["deleted"] == 1, got
        self.in_process.append(got["ingest_s"])
        return float(got["wall_s"])


def setup(files: int, per_file: int, baseline: str) -> list[Project]:
    corpus = BENCH_DIR / f"ingest-corpus-{files}x{per_file}"
    if not corpus.exists():
        make_corpus(corpus, files, per_file)
    projects = [
        Project("current", REPO, corpus, files),
        Project(baseline, baseline_tree(baseline), corpus, files),
    ]
    for p in projects:
        cache = p.dir / ".pov" / "cache" / "embeddings.sqlite"
        seeded = projects[0].dir / ".pov" / "cache" / "embeddings.sqlite"
        if p is not projects[0] and not cache.exists() and seeded.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(seeded, cache)
        started = time.perf_counter()
        got = p.ingest()  # the first ingest, or bringing the store up to date: not timed
        print(f"set-up {p.name}: {got['chunks']} in {time.perf_counter() - started:.1f} s", flush=True)
    return projects


def entries(projects: list[Project]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    current, base = projects
    fns = {
        "no-change current": current.no_change,
        f"no-change {base.name}": base.no_change,
        "edit current": current.edit,
        f"edit {base.name}": base.edit,
    }
    pairs = [("no-change current", f"no-change {base.name}"), ("edit current", f"edit {base.name}")]
    return fns, pairs


def test_reingest(benchmark: Any) -> None:
    from interleave import bench

    baseline = os.environ.get("POV_BENCH_BASELINE", "HEAD")
    projects = setup(500, 100, baseline)
    fns, pairs = entries(projects)
    benchmark.group = f"re-ingest 50,000 chunks against {baseline}"
    bench(benchmark, fns, pairs, 5, benchmark.group)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="HEAD", metavar="REF")
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--per-file", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    projects = setup(args.files, args.per_file, args.baseline)
    fns, pairs = entries(projects)
    print(
        f"{args.files * args.per_file} chunks; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    times = interleave(fns, args.rounds, warmup=0)
    print(table(times, pairs, f"`pov ingest` process wall time, {args.rounds} interleaved rounds", 1, "s"))
    for p in projects:
        print(f"{p.name}: in-process load_spec + ingest, s: {', '.join(f'{t:.2f}' for t in p.in_process)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
