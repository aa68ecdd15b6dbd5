"""`pov serve`: workers that stay loaded between runs, on the CPU with the tiny model in real processes.
Also the local executor's early start of its workers, which overlaps a run's preparation."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, RecordingTracker, StubRetriever, gen_spec

from runner import cli
from runner.generation import server_info as serve
from runner.generation.executors import make_executor
from runner.generation.executors.local import LocalExecutor
from runner.generation.executors.serve_client import ServeExecutor, ServerGone
from runner.run.engine import run_experiment
from runner.spec import expand, load_spec


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path: Path, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    spec = gen_spec(tmp_path, tiny_model_dir, questions=3, personas=1, pov_sets=2)
    log = (tmp_path / "serve.log").open("w")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "serve", str(spec), "--idle-timeout", "10"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    state = tmp_path / ".pov"
    try:
        _wait(lambda: serve.find_server(state) is not None or proc.poll() is not None, 60, "pov serve")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        yield {"spec": spec, "proc": proc, "state": state, "log": tmp_path / "serve.log"}
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        log.close()
        for pid in _worker_pids(state):  # orphans of a server killed mid-run
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _worker_log(state: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((state / "serve" / "workers").glob("*.log")))


def _worker_pids(state: Path) -> list[int]:
    if not (state / "serve" / "workers").exists():
        return []
    return [int(pid) for pid in re.findall(r"pov worker (\d+): loading", _worker_log(state))]


def _run(exp: Any, executor: Any = None) -> tuple[Any, dict[str, Any]]:
    tracker = RecordingTracker()
    summary = run_experiment(
        exp, expand(exp), tracker, executor=executor, retriever=StubRetriever(), quiet=True
    )
    return summary, tracker.results


@pytest.mark.slow
def test_runs_share_one_loaded_worker_and_answer_as_a_local_run(served: dict[str, Any]) -> None:
    exp = load_spec(served["spec"])
    assert isinstance(make_executor(exp.spec, state_dir=exp.state_dir), ServeExecutor), "found by itself"
    # The server hashed the model's files for the runs' manifests while its worker loaded.
    cache = served["state"] / "cache" / "file_hashes.json"
    _wait(cache.exists, 60, "the model's file hashes")
    files = {str(p.resolve()) for p in Path(exp.spec.models["tiny"].name).rglob("*") if p.is_file()}
    assert files and files <= set(json.loads(cache.read_text()))
    first, results1 = _run(exp)
    second, results2 = _run(exp)
    assert first.finished == second.finished == len(expand(exp)) == 6
    # One model load for both runs: the second run started no worker.
    assert len(_worker_pids(served["state"])) == 1, _worker_log(served["state"])
    assert all("worker_start_s" not in r.metrics for r in results2.values())
    local, results_local = _run(exp, make_executor(exp.spec, auto_serve=False))
    assert isinstance(make_executor(exp.spec, auto_serve=False), LocalExecutor)
    assert local.finished == 6
    for cell_id, r in results_local.items():
        assert results1[cell_id].output == results2[cell_id].output == r.output


@pytest.mark.slow
def test_a_crash_in_a_served_run_is_recorded_and_the_server_goes_on(served: dict[str, Any]) -> None:
    faults = "faults=[{cause: segfault, match: {question: q1, pov_set: p1}}, {cause: exception, match: {question: q2}}]"
    exp = load_spec(served["spec"], [faults])
    summary, results = _run(exp)
    causes = {(r.cell.question, r.cell.pov_set): r.cause for r in results.values() if r.status == "crashed"}
    assert causes == {("q1", "p1"): "segfault", ("q2", "p1"): "exception", ("q2", "p2"): "exception"}
    assert summary.finished == 3
    segfault = next(r for r in results.values() if r.cause == "segfault")
    assert "injected fault 'segfault'" in (segfault.stderr_tail or "")
    assert served["proc"].poll() is None, "the server survives its worker's crash"
    clean, _ = _run(load_spec(served["spec"]))
    assert clean.finished == 6


@pytest.mark.slow
def test_a_server_killed_mid_run_aborts_the_run_cleanly(served: dict[str, Any]) -> None:
    exp = load_spec(
        served["spec"], ["faults=[{cause: timeout, match: {question: q3}}]", "limits.cell_timeout_s=60"]
    )
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["summary"] = _run(exp)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    _wait(lambda: "injected fault 'timeout'" in _worker_log(served["state"]), 60, "the hanging batch")
    served["proc"].kill()
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(box.get("error"), ServerGone), box
    assert "resumes them" in str(box["error"])


def test_the_cli_reports_a_lost_server_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    import runner.run

    def gone(*args: Any, **kwargs: Any) -> Any:
        raise ServerGone("pov serve (pid 1) ended before the run did")

    monkeypatch.setattr(runner.run, "run_experiment", gone)
    code = cli.main(["run", str(gen_spec(tmp_path, tiny_model_dir)), "--no-track"])
    err = capsys.readouterr().err
    assert code == 1
    assert "ended before the run did" in err and "Traceback" not in err


@pytest.mark.slow
def test_status_stop_and_a_wrong_key(served: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    project = str(served["state"].parent)
    assert cli.main(["serve", "--status", "--project", project]) == 0
    assert f'"pid": {served["proc"].pid}' in capsys.readouterr().out
    info = serve.find_server(served["state"])
    assert info is not None and (served["state"] / "serve.json").stat().st_mode & 0o077 == 0
    with pytest.raises(multiprocessing.AuthenticationError):
        Client(info["socket"], family="AF_UNIX", authkey=b"not the key")
    assert serve.request(served["state"], ("status",))[0] == "status", "still serving"
    assert cli.main(["serve", "--stop", "--project", project]) == 0
    served["proc"].wait(60)
    assert not (served["state"] / "serve.json").exists() and not Path(info["socket"]).exists()
    capsys.readouterr()
    assert cli.main(["serve", "--status", "--project", project]) == 1
    assert "no pov serve is running" in capsys.readouterr().out


def test_serve_executor_without_a_server_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    from runner.errors import UserError

    exp = load_spec(gen_spec(tmp_path, tiny_model_dir), ["executor.kind=serve"])
    with pytest.raises(UserError, match="no `pov serve` is running"):
        make_executor(exp.spec, state_dir=exp.state_dir)


class _ChildrenSeen(StubRetriever):
    """Notes which worker processes exist when retrieval runs."""

    def retrieve(self, keys: Any) -> Any:
        self.children = [p.name for p in multiprocessing.active_children()]
        return super().retrieve(keys)


def test_local_workers_start_loading_before_retrieval(tmp_path: Path, tiny_model_dir: Path) -> None:
    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=2, personas=1, pov_sets=1))
    retriever = _ChildrenSeen()
    summary = run_experiment(
        exp,
        expand(exp),
        RecordingTracker(),
        executor=LocalExecutor([], exp.spec.limits),
        retriever=retriever,
        quiet=True,
    )
    assert summary.finished == 2
    assert any(name.startswith("pov-worker-") for name in retriever.children), retriever.children
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("pov-worker-")]


class _FailingRetriever(StubRetriever):
    def retrieve(self, keys: Any) -> Any:
        raise RuntimeError("the retriever broke")


def test_workers_begun_for_a_run_that_fails_early_are_stopped(tmp_path: Path, tiny_model_dir: Path) -> None:
    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=1, personas=1, pov_sets=1))
    with pytest.raises(RuntimeError, match="the retriever broke"):
        run_experiment(
            exp,
            expand(exp),
            RecordingTracker(),
            executor=LocalExecutor([], exp.spec.limits),
            retriever=_FailingRetriever(),
            quiet=True,
        )
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("pov-worker-")]
