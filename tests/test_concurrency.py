"""Real `pov run` processes side by side, killed and interrupted: one execution has one writer.

Every run here is a subprocess of `python -m runner.cli` with the tiny Llama, MiniLM over the BRICS sample in
the project's own Chroma store and a sqlite MLflow store, so a cell recorded twice would show in MLflow and
in results.jsonl.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import gen_spec

from runner.run import read_results
from runner.spec import expand, load_spec

ROUNDS = 5
WAIT_S = 600  # for one `pov run` of a few cells on two busy CPU cores
REFUSED = re.compile(
    r"another pov run \(pid (\d+) on [^,]+, since \d\d:\d\d:\d\d\) is running this spec's execution; "
    r"wait for it or stop it"
)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class Pov:
    proc: subprocess.Popen[bytes]
    out: Path
    started: float
    ended: float | None = None

    @property
    def text(self) -> str:
        return self.out.read_text(errors="replace")


def _pov(tmp: Path, name: str, *args: str) -> Pov:
    out = tmp / f"{name}.log"
    with out.open("wb") as fh:
        started = time.monotonic()
        # Its own session, so that whatever it leaves behind can be found and killed as a group.
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", *args],
            cwd=tmp,
            env=_env(tmp),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Pov(proc, out, started)


def _wait_all(runs: list[Pov], timeout_s: float = WAIT_S) -> None:
    """Wait for every run to exit, noting when each did (to 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while any(r.ended is None for r in runs):
        for r in runs:
            if r.ended is None and r.proc.poll() is not None:
                r.ended = time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail("pov run did not end in time:\n" + "\n----\n".join(r.text[-3000:] for r in runs))
        time.sleep(0.02)


def _kill_group(run: Pov) -> None:
    """SIGKILL the run's session (the runner and its workers), as a machine losing power would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait(timeout=60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(run.proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _results_lines(tmp: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (tmp / ".pov" / "runs").glob("*/*/results.jsonl"))


def _wait_for_results(tmp: Path, run: Pov, n: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while _results_lines(tmp) < n:
        if run.proc.poll() is not None:
            pytest.fail(f"pov run ended before writing {n} result(s):\n{run.text[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no result within {WAIT_S} s:\n{run.text[-3000:]}")
        time.sleep(0.05)


def _runs(tmp: Path) -> tuple[list[Any], list[Any]]:
    """(executions, cell runs) in the project's store, deleted ones included."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    eid = client.get_experiment_by_name("gen-test").experiment_id
    runs = list(client.search_runs([eid], "", ViewType.ALL, 50_000))
    return (
        [r for r in runs if r.data.tags.get("pov.kind") == "execution"],
        [r for r in runs if r.data.tags.get("pov.kind") == "cell"],
    )


def _refused_by(loser: Pov, winner: Pov) -> None:
    text = loser.text
    assert loser.proc.returncode == 2, text
    found = REFUSED.search(text)
    assert found, text
    assert int(found.group(1)) == winner.proc.pid, "the refusal names the process that holds the execution"
    assert "Traceback" not in text


def _cleanup(runs: list[Pov]) -> None:
    for r in runs:
        if r.proc.poll() is None:
            _kill_group(r)


@pytest.mark.slow
def test_two_runs_of_one_spec_started_together_record_each_cell_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Round 1 on a fresh project (no store, no index yet), then --fresh executions: each time one run
    records every cell once and the other is refused before it writes anything."""
    spec = gen_spec(tmp_path, tiny_model_dir, questions=2, personas=1, pov_sets=1)
    cells = sorted(c.id for c in expand(load_spec(spec)))
    refusals: list[float] = []
    started: list[Pov] = []
    try:
        for i in range(ROUNDS):
            fresh = ["--fresh"] if i else []
            pair = [_pov(tmp_path, f"round{i}-{j}", "run", str(spec), "--quiet", *fresh) for j in (0, 1)]
            started += pair
            _wait_all(pair)
            codes = sorted(r.proc.returncode for r in pair)
            assert codes == [0, 2], "\n----\n".join(r.text[-3000:] for r in pair)
            winner, loser = sorted(pair, key=lambda r: r.proc.returncode)
            _refused_by(loser, winner)
            assert loser.ended is not None
            refusals.append(loser.ended - loser.started)
    finally:
        _cleanup(started)
    print(f"refused after (s, from the loser's start): {', '.join(f'{t:.2f}' for t in refusals)}")

    parents, kids = _runs(tmp_path)
    assert len(parents) == ROUNDS, "a refused run created no execution"
    for parent in parents:
        mine = [
            k.data.tags["pov.cell_id"]
            for k in kids
            if k.data.tags["mlflow.parentRunId"] == parent.info.run_id
        ]
        assert sorted(mine) == cells, "each cell recorded once in each execution"
        assert parent.data.tags["pov.state"] == "finished"
    folders = list((tmp_path / ".pov" / "runs" / "gen-test").iterdir())
    assert len(folders) == ROUNDS, "a refused run wrote no run folder"
    for folder in folders:
        lines = (folder / "results.jsonl").read_text().splitlines()
        assert len(lines) == len(cells) and set(read_results(folder / "results.jsonl")) == set(cells)


@pytest.mark.slow
def test_two_resumes_of_a_killed_execution_record_each_cell_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A run killed (SIGKILL, runner and workers) after its first results, then resumed twice at once: one
    resume takes the lock the killed run left behind, the other is refused naming it."""
    spec = gen_spec(tmp_path, tiny_model_dir, questions=3, personas=1, pov_sets=2)
    # One cell a batch, so the kill lands between cells (the same --set for all: it is part of the spec).
    one_by_one = "generation.batch_size=1"
    cells = sorted(c.id for c in expand(load_spec(spec, [one_by_one])))
    started: list[Pov] = []
    try:
        args = ["run", str(spec), "--quiet", "--set", one_by_one]
        first = _pov(tmp_path, "killed", *args)
        started.append(first)
        _wait_for_results(tmp_path, first, 1)
        _kill_group(first)
        pair = [_pov(tmp_path, f"resume{j}", *args) for j in (0, 1)]
        started += pair
        _wait_all(pair)
    finally:
        _cleanup(started)
    assert sorted(r.proc.returncode for r in pair) == [0, 2], "\n----\n".join(r.text[-3000:] for r in pair)
    winner, loser = sorted(pair, key=lambda r: r.proc.returncode)
    _refused_by(loser, winner)
    assert "resuming execution" in winner.text

    parents, kids = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].data.tags["pov.state"] == "finished"
    live = Counter(k.data.tags["pov.cell_id"] for k in kids if k.info.lifecycle_stage == "active")
    assert sorted(live) == cells and set(live.values()) == {1}, "each cell has one live record"
    finished = Counter(
        k.data.tags["pov.cell_id"]
        for k in kids
        if k.info.status == "FINISHED" and k.data.tags.get("pov.status") == "finished"
    )
    assert set(finished.values()) == {1}, "no cell was generated and recorded twice"


@pytest.mark.slow
def test_ctrl_c_says_how_many_cells_are_recorded_and_how_to_resume(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec = gen_spec(tmp_path, tiny_model_dir, questions=3, personas=1, pov_sets=2)
    total = len(expand(load_spec(spec)))
    run = _pov(tmp_path, "interrupted", "run", str(spec), "--quiet", "--set", "generation.batch_size=1")
    try:
        _wait_for_results(tmp_path, run, 1)
        run.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends (to the runner; its workers ignore it)
        _wait_all([run], 120)
    finally:
        _cleanup([run])
    text = run.text
    assert run.proc.returncode == 130, text
    found = re.search(r"interrupted: (\d+) of (\d+) cells recorded; run the same command to resume", text)
    assert found, text
    assert "Traceback" not in text
    recorded = _results_lines(tmp_path)
    assert (int(found.group(1)), int(found.group(2))) == (recorded, total)
    assert 1 <= recorded < total
    parents, kids = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].data.tags["pov.state"] == "interrupted"
    assert len([k for k in kids if k.info.status == "FINISHED"]) == recorded, "what it says is recorded is"


HOLDER = """
import sys, time
from runner.run import execution_lock
from runner.spec import load_spec

with execution_lock(load_spec(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_held_execution_refuses_a_second_run_and_a_killed_holder_leaves_it_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli
    from runner.run import execution_lock

    (tmp_path / "model").mkdir()  # nothing gets as far as loading it
    spec = gen_spec(tmp_path, tmp_path / "model", questions=2, personas=1, pov_sets=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(spec)], stdout=subprocess.PIPE, env=_env(tmp_path), cwd=tmp_path
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert cli.main(["run", str(spec), "--quiet"]) == 2
        err = capsys.readouterr().err
        found = REFUSED.search(err)
        assert found and int(found.group(1)) == holder.pid, err
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".pov" / "runs").exists()
    finally:
        holder.kill()  # SIGKILL: no chance to release anything itself
        holder.wait(timeout=60)
    exp = load_spec(spec)
    with execution_lock(exp) as path:
        assert f'"pid": {os.getpid()}' in path.read_text(), "the dead holder's text is replaced"
        with execution_lock(exp):  # the holder may take it again
            pass
    assert path.read_text() == "", "a released lock names nobody"
