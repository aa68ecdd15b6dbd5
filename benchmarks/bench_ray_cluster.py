"""`pov run` of the tiny quickstart (18 cells) on a 3-node Ray cluster on this machine (tests/ray_cluster.py:
a head and two worker nodes, each a `ray start` of its own) against the local executor, and a 36-cell run
without and with a worker node lost mid-run. Each run a fresh `pov run ... --fresh --no-track` process; its
own reported wall time. Rounds alternate the entries.

    python benchmarks/bench_ray_cluster.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "tests")]
POV = str(Path(sys.executable).parent / "pov")
SPEC = """\
name: {name}
extends: {repo}/experiments/tiny.yaml
generation: {{max_new_tokens: {tokens}, min_new_tokens: {tokens}, temperature: 0.0, seed: 0, batch_size: {batch}}}
matrix:
  question: {questions}
"""
THREE = "[japan-alliances, brics-growth-drivers, local-currency-settlement]"
SIX = THREE[:-1] + ", g7-response, brics-common-currency, global-south-institutions]"


def wall(log: str) -> float:
    m = re.search(r"wall time (?:(\d+)m )?([\d.]+)s", log)
    assert m, log[-2000:]
    return 60 * float(m.group(1) or 0) + float(m.group(2))


def _answered(proj: Path, node: str) -> int:
    """Cells of the newest run folder answered by `node`."""
    import json

    files = sorted((proj / ".pov" / "runs").glob("*/*/results.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        return 0
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return sum(1 for r in rows if (r.get("batch") or {}).get("node") == node)


def main() -> None:
    from conftest import copy_brics_project  # type: ignore[import-not-found]
    from ray_cluster import LocalCluster, Node  # type: ignore[import-not-found]

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="", help="entries to run, by index (0,1,2,3)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="povray-"))
    cluster = LocalCluster(root, [Node("w1", "127.0.0.2", 1, 1), Node("w2", "127.0.0.3", 1, 1)], head_gpus=1)
    proj = copy_brics_project(Path(tempfile.mkdtemp(prefix="pov-bench-")) / "proj")
    for name, questions, tokens, batch in (("quick", THREE, 48, 8), ("long", SIX, 160, 2)):
        (proj / f"{name}.yaml").write_text(
            SPEC.format(name=name, repo=REPO, tokens=tokens, batch=batch, questions=questions)
        )
    try:
        cluster.start()
        env = {**cluster.env(), "POV_MODEL_CACHE": str(proj / ".pov" / "models")}

        def run(spec: str, *extra: str, kill: bool = False) -> float:
            cmd = [POV, "run", spec, "--fresh", "--no-track", "--quiet", *extra]
            proc = subprocess.Popen(
                cmd, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            if kill:  # once w1 has answered two cells (results.jsonl names the node): it is mid-shard
                deadline = time.monotonic() + 300
                while (
                    _answered(proj, "127.0.0.2") < 2 and time.monotonic() < deadline and proc.poll() is None
                ):
                    time.sleep(0.2)
                cluster.kill_node(cluster.workers[0])
            out = proc.communicate(timeout=600)[0]
            assert proc.returncode == 0, out[-3000:]
            counts = re.search(r"(\d+) finished, (\d+) crashed", out)
            assert counts and counts.group(2) == "0", out[-3000:]  # a lost node costs time, never a cell
            if kill:
                cluster.restart(cluster.workers[0])
            return wall(out)

        subprocess.run([POV, "ingest", "quick.yaml"], cwd=proj, env=env, check=True, capture_output=True)
        ray = ["--executor", "ray", "--address", cluster.address]
        only = {k for k in args.only.split(",")} if args.only else None
        entries = {
            "quickstart 18 cells, local executor": lambda: run("quick.yaml", "--executor", "local"),
            "quickstart 18 cells, 3-node Ray": lambda: run("quick.yaml", *ray),
            "36 cells x 160 tokens, 3-node Ray": lambda: run("long.yaml", *ray),
            "same, worker node w1 lost mid-run": lambda: run("long.yaml", *ray, kill=True),
        }
        entries = {k: v for i, (k, v) in enumerate(entries.items()) if only is None or str(i) in only}
        got: dict[str, list[float]] = {k: [] for k in entries}
        run("quick.yaml", "--executor", "local")  # warm-up: builds the tiny model
        for r in range(args.rounds):
            names = list(entries)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                got[name].append(entries[name]())
        print(f"\n`pov run` wall time, {args.rounds} rounds (median, min)")
        for name, ts in got.items():
            print(f"{name:>40} {statistics.median(ts):7.1f} s {min(ts):7.1f} s")
    finally:
        left = cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(proj.parent, ignore_errors=True)
        assert not left, left


if __name__ == "__main__":
    main()
