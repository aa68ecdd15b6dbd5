"""`pov run` killed with SIGKILL at random moments, then run again: each cell ends with exactly one child run.

Real everything: the `pov` console script in a subprocess, the tiny local Llama, MiniLM, Chroma, and a
sqlite MLflow store. Kill moments are drawn from a seeded generator: some while the runner starts
(imports, manifest, retrieval), some right after a cell's artifacts land (between logging a child and
setting it FINISHED, or in the middle of a batch).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
POV = str(Path(sys.executable).parent / "pov")
SEED = 20261124
KILLS = 5

SPEC = f"""\
name: killtest
extends: {ROOT / "experiments" / "tiny.yaml"}
generation: {{max_new_tokens: 4, temperature: 0.0, seed: 0, batch_size: 2}}
matrix:
  question: [japan-alliances, brics-growth-drivers]
  k: [[15, 10, 5], [8, 6, 3]]
limits: {{cell_timeout_s: 120}}
tracking: {{experiment: killtest}}
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
        PYTHONUNBUFFERED="1",
    )
    return env


def _pov(tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (tmp / "runs.log").open("ab")
    log.write(f"\n$ pov {' '.join(args)}\n".encode())
    log.flush()
    # Its own session, so that anything the runner leaves behind can be found (and cleaned up) as a group.
    return subprocess.Popen(
        [POV, *args], cwd=tmp, env=_env(tmp), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _logged_cells(tmp: Path) -> int:
    """Child runs whose artifacts are written: the last step before a child is set FINISHED."""
    return len(list((tmp / "mlruns").glob("*/*/artifacts/output.md")))


def _reap_group(proc: subprocess.Popen[bytes]) -> bool:
    """Wait for the runner's session to empty (its workers exit on their own when it dies); kill what
    remains after 15 s. True if something had to be killed."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _kill_at(tmp: Path, proc: subprocess.Popen[bytes], mode: str, rng: random.Random) -> str:
    if mode == "startup":  # imports, manifest, tracker start, retrieval, worker start: seconds, always
        delay = rng.uniform(0.2, 2.5)
        end = time.monotonic() + delay
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.01)
        what = f"startup +{delay:.2f}s"
    else:  # right after a child's artifacts land (mid-cell or mid-batch), or a little later (generating)
        start = _logged_cells(tmp)
        more = rng.randint(1, 6)
        while _logged_cells(tmp) < start + more and proc.poll() is None:
            time.sleep(0.002)
        extra = rng.choice([0.0, rng.uniform(0.0, 0.5)])
        time.sleep(extra)
        what = f"{more} more logged cell(s) +{extra:.2f}s"
    if proc.poll() is not None:
        return f"{what}: runner had already exited ({proc.returncode})"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return what


def _runs(tmp: Path) -> tuple[list[Any], list[Any]]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    eid = client.get_experiment_by_name("killtest").experiment_id
    runs = list(client.search_runs([eid], "", ViewType.ALL, 50_000))
    parents = [r for r in runs if r.data.tags.get("pov.kind") == "execution"]
    kids = [r for r in runs if r.data.tags.get("pov.kind") == "cell"]
    return parents, kids


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    from runner.spec import expand, load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    cells = {c.id for c in expand(load_spec(spec))}
    assert len(cells) >= 20
    done = subprocess.run(
        [POV, "ingest", str(spec)], cwd=tmp_path, env=_env(tmp_path), capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()

    rng = random.Random(SEED)
    modes = ["startup", "logging", "startup", "logging", "logging"]
    notes = []
    orphans = 0
    for mode in modes[:KILLS]:
        proc = _pov(tmp_path, "run", str(spec), "--quiet")
        notes.append(_kill_at(tmp_path, proc, mode, rng))
        orphans += _reap_group(proc)
    final = _pov(tmp_path, "run", str(spec), "--quiet")
    assert final.wait(timeout=900) == 0, (tmp_path / "runs.log").read_text()[-4000:]
    _reap_group(final)
    print(f"kills: {notes}; runner sessions that left processes behind: {orphans}")

    parents, kids = _runs(tmp_path)
    context = f"kills: {notes}; orphaned worker groups: {orphans}"
    assert len(parents) == 1, context  # every run continued the same execution
    parent = parents[0]
    assert parent.data.tags["pov.state"] == "finished" and parent.info.status == "FINISHED", context
    assert parent.data.metrics["cells_finished"] == len(cells) and parent.data.metrics["cells_total"] == len(
        cells
    )

    live = [k for k in kids if k.info.lifecycle_stage == "active"]
    live_ids = [k.data.tags["pov.cell_id"] for k in live]
    assert sorted(live_ids) == sorted(cells), context  # one live child per cell: none lost, none twice
    assert all(k.info.status == "FINISHED" and k.data.tags["pov.status"] == "finished" for k in live), context
    finished_ids = [
        k.data.tags["pov.cell_id"]
        for k in kids
        if k.info.status == "FINISHED" and k.data.tags.get("pov.status") == "finished"
    ]
    assert sorted(finished_ids) == sorted(cells), context  # also counting deleted runs: exactly one FINISHED
    for k in kids:
        if k.info.lifecycle_stage == "deleted":  # a child cut off by a kill: KILLED and marked superseded
            assert k.info.status == "KILLED" and k.data.tags["pov.superseded"] == "true", context
    assert all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    # The log shows each session resumed the one execution rather than starting another.
    assert (tmp_path / "runs.log").read_text().count("resuming execution") >= 1
