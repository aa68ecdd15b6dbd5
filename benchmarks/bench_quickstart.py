"""The tiny-model quickstart as a user runs it again: `pov run SPEC --fresh --no-track`, a fresh process each
time, against the code at a git ref. How much of its wall time is spent outside `model.generate`?

    python benchmarks/bench_quickstart.py --baseline REF [--rounds 10] [--serve] [--bare] [--profile]
    pytest benchmarks/bench_quickstart.py -o python_files='bench_*.py' -s     # POV_BENCH_BASELINE=REF

The spec is benchmarks/specs/quickstart_tiny.yaml (18 cells, 48 new tokens each, MiniLM, the tiny Llama on
the CPU), copied into a project of its own per version (.pov/bench/quickstart-<name>/), so that each keeps
its own store, caches and run folders. A first run per version (not timed) builds the tiny model, ingests
the corpus and fills the embedding cache, so every timed run is a warm one. Per run: the process's wall
time, measured from outside, and the seconds inside `model.generate` (the run's summary.json,
`generate_time_s`); the share outside is 1 - generate / wall. Rounds interleave the versions.

--serve adds the current code with its worker kept loaded by `pov serve` (in a project of its own, since a
running server takes over every `pov run` of its project): what a user who iterates on a spec pays.
--bare adds the floor of a cold run: a script of the least code that answers the same 18 prompts (import
torch and transformers, load the model, generate in the same batches, on as many threads as a worker
uses), timed the same way; no runner can spend less outside `generate` without a loaded worker.
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
    def __init__(self, name: str, code: Path, *, serve: bool = False) -> None:
        self.name, self.code, self.serve = name, code, serve
        self.server: subprocess.Popen[bytes] | None = None
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

    def start_server(self) -> None:
        """`pov serve` for this project, its worker loaded: returns once it says it is ready."""
        argv = [sys.executable, "-m", "runner.cli", "serve", str(self.spec), "--idle-timeout", "30"]
        log = self.dir / "serve.log"
        with log.open("w") as out:
            self.server = subprocess.Popen(argv, cwd=self.dir, env=self.env(), stdout=out, stderr=out)
        deadline = time.monotonic() + 300
        while "pov serve: ready" not in log.read_text():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: pov serve did not get ready:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=60)
            self.server = None

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


class Bare(Version):
    """The least code that answers the spec's prompts (BARE below), on the prompts and model folder of the
    current version's set-up run."""

    def __init__(self, current: Version) -> None:
        super().__init__("bare", REPO)
        self.current = current

    def run(self) -> float:
        results = sorted(self.current.dir.glob(".pov/runs/*/*/results.jsonl"))[-1]
        model = next(self.current.dir.glob(".pov/models/tiny-llama-*"))
        threads = str(max(1, (os.cpu_count() or 1) - 1))  # as a CPU worker (runner.generation.worker)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", BARE, str(model), str(results), threads],
            env=self.env(),
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"bare script failed:\n{proc.stderr[-3000:]}")
        generate = float(proc.stdout.strip().splitlines()[-1])
        self.runs.append({"wall_s": wall, "generate_s": generate, "outside": 1 - generate / wall})
        return wall


BARE = """
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, results, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(min(torch.get_num_threads(), threads))
prompts = [json.loads(line)["prompt"] for line in open(results)]
tok = AutoTokenizer.from_pretrained(folder)
tok.padding_side = "left"
if tok.pad_token_id is None:
    tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
chat = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts]
chat.sort(key=lambda text: len(tok(text)["input_ids"]))
inside = 0.0
for i in range(0, len(chat), 8):
    batch = tok(chat[i : i + 8], return_tensors="pt", padding=True, add_special_tokens=False)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
    inside += time.perf_counter() - started
print(inside)
"""


def setup(baseline: str, *, serve: bool = False, bare: bool = False) -> list[Version]:
    current = Version("current", REPO)
    versions = [current, Version(baseline, baseline_tree(baseline))]
    if serve:
        versions.append(Version("served", REPO, serve=True))
    for v in versions:
        started = time.perf_counter()
        v.run()  # builds the tiny model, ingests, fills the caches
        v.runs.clear()
        if v.serve:
            v.start_server()
        print(f"set-up {v.name}: {time.perf_counter() - started:.1f} s", flush=True)
    if bare:
        versions.append(Bare(current))
    return versions


def report(versions: list[Version]) -> str:
    base = versions[1]
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
    for v in versions:
        if v is base:
            continue
        pairs = [a["outside"] / b["outside"] for a, b in zip(v.runs, base.runs, strict=True)]
        walls = [a["wall_s"] / b["wall_s"] for a, b in zip(v.runs, base.runs, strict=True)]
        lines.append(
            f"share outside generate, {v.name} / {base.name}, per round: median {statistics.median(pairs):.3f} "
            f"[{min(pairs):.3f}, {max(pairs):.3f}]; wall time: median {statistics.median(walls):.3f}"
        )
    return "\n".join(lines)


def test_quickstart(benchmark: Any) -> None:
    from interleave import bench

    baseline = os.environ.get("POV_BENCH_BASELINE", "HEAD")
    versions = setup(baseline, serve=True, bare=True)
    benchmark.group = f"quickstart tiny model, against {baseline}"
    fns = {f"run {v.name}": v.run for v in versions}
    try:
        pairs = [(f"run {v.name}", f"run {baseline}") for v in versions if v.name != baseline]
        bench(benchmark, fns, pairs, 5, benchmark.group)
        print(report(versions))
    finally:
        for v in versions:
            v.stop_server()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="HEAD", metavar="REF")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--serve", action="store_true", help="add the current code behind `pov serve`")
    parser.add_argument("--bare", action="store_true", help="add the least script that does the same")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    versions = setup(args.baseline, serve=args.serve, bare=args.bare)
    try:
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        interleave({v.name: v.run for v in versions}, args.rounds, warmup=0)
        print(report(versions))
        if args.profile:
            for v in versions:
                if not isinstance(v, Bare):
                    v.profile()
    finally:
        for v in versions:
            v.stop_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
