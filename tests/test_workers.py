"""Workers: the in-worker core, crash causes, the group driver's isolation and restarts, and real worker
processes that really die (signals, hangs) with the right cause recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from runner.generation.executors.local import LocalExecutor
from runner.generation.executors.pool import RestartBudget, make_batches, run_group
from runner.generation.executors.process import ProcessWorker
from runner.generation.faults import InjectedFault
from runner.generation.jobs import Job, JobResult, LoadFailed, WorkerCrash, classify_exception, classify_exit
from runner.generation.worker import serve_batch
from runner.spec import Generation, Limits, Model

PARAMS = Generation(max_new_tokens=3, batch_size=4)


class InProcessEcho:
    device = "cpu"

    def generate(self, prompts: list[str], params: Any) -> list[Any]:
        from runner.generation.backends.base import GenerationOut

        return [GenerationOut(p.upper(), len(p), 2, 0.5, 4.0, len(p) > 100) for p in prompts]

    def info(self) -> dict[str, float]:
        return {"model_memory_mb": 1.5}


# -- the in-worker core ----------------------------------------------------------------------------------------
def test_serve_batch_measures_every_cell() -> None:
    jobs = [Job("a", "one"), Job("b", "x" * 200)]
    results = serve_batch(InProcessEcho(), jobs, PARAMS)
    assert [r.cell_id for r in results] == ["a", "b"]
    assert [r.output for r in results] == ["ONE", "X" * 200]
    assert all(r.status == "finished" for r in results)
    a, b = (r.metrics for r in results)
    assert a["batch_size"] == 2 and a["latency_s"] == 0.5 and a["tokens_per_s"] == 4.0
    assert a["prompt_truncated"] == 0.0 and b["prompt_truncated"] == 1.0
    assert a["gpu_peak_allocated_mb"] == 0.0 and a["gpu_peak_reserved_mb"] == 0.0  # CPU
    assert a["host_rss_mb"] > 10  # this Python process holds at least that much
    assert a["model_memory_mb"] == 1.5
    assert results[0].started_at <= results[0].ended_at


def test_serve_batch_raises_injected_exception_before_generating() -> None:
    class Refuses(InProcessEcho):
        def generate(self, prompts: list[str], params: Any) -> list[Any]:
            raise AssertionError("must not generate a batch that holds a faulty job")

    with pytest.raises(InjectedFault) as e:
        serve_batch(Refuses(), [Job("a", "p"), Job("b", "p", fault="exception")], PARAMS)
    assert classify_exception(e.value) == ("exception", f"InjectedFault: {e.value}")
    assert "b" in str(e.value)


def test_injected_cuda_oom_is_the_real_torch_error() -> None:
    import torch

    with pytest.raises(torch.cuda.OutOfMemoryError) as e:
        serve_batch(InProcessEcho(), [Job("a", "p", fault="cuda_oom")], PARAMS)
    assert classify_exception(e.value)[0] == "cuda_oom"


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "cuda_oom"),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), "exception"),
        (ValueError("bad value"), "exception"),
        (KeyError("k"), "exception"),
    ],
)
def test_classify_exception(exc: BaseException, cause: str) -> None:
    got_cause, text = classify_exception(exc)
    assert got_cause == cause
    assert text.startswith(type(exc).__name__ + ": ")


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (-signal.SIGSEGV, "segfault"),
        (-signal.SIGABRT, "abort"),
        (-signal.SIGKILL, "killed"),
        (-signal.SIGTERM, "killed"),
        (1, "exception"),
        (None, "killed"),
    ],
)
def test_classify_exit(code: int | None, cause: str) -> None:
    assert classify_exit(code)[0] == cause


def test_batches_are_cut_from_jobs_sorted_by_prompt_length() -> None:
    jobs = [Job(str(i), "w " * n) for i, n in enumerate([9, 1, 7, 3, 5, 2, 8])]
    batches = make_batches(jobs, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    lengths = [len(j.prompt) for b in batches for j in b]
    assert lengths == sorted(lengths)
    assert {j.cell_id for b in batches for j in b} == {str(i) for i in range(7)}


# -- the group driver, with a scripted in-process worker ---------------------------------------------------------
class ScriptedWorker:
    """Crashes any batch holding a job whose prompt names a cause; 'load' makes start fail."""

    def __init__(self, fail_load: bool = False) -> None:
        self._alive = False
        self.fail_load = fail_load
        self.starts = 0
        self.batches: list[list[str]] = []
        self.hints: list[list[str] | None] = []

    @property
    def alive(self) -> bool:
        return self._alive

    def start(self) -> dict[str, float]:
        self.starts += 1
        if self.fail_load:
            raise LoadFailed("exception", "OSError: no such model", "tail", worker_alive=False)
        self._alive = True
        return {}

    def run_batch(
        self, jobs: list[Job], params: Generation, timeout_s: float, ahead: list[Job] | None = None
    ) -> list[JobResult]:
        self.batches.append([j.cell_id for j in jobs])
        self.hints.append([j.cell_id for j in ahead] if ahead else None)
        for j in jobs:
            if j.fault:
                dies = j.fault in ("segfault", "killed", "abort", "timeout")
                self._alive = not dies
                raise WorkerCrash(j.fault, f"{j.fault} in {j.cell_id}", "stderr tail", worker_alive=not dies)
        return [
            JobResult(j.cell_id, "finished", output="ok", metrics={"batch_size": float(len(jobs))})
            for j in jobs
        ]


def _drive(worker: ScriptedWorker, jobs: list[Job], restarts: int = 10) -> dict[str, JobResult]:
    out: dict[str, JobResult] = {}

    def emit(results: list[JobResult]) -> None:
        for r in results:
            assert r.cell_id not in out, "a cell reported twice"
            out[r.cell_id] = r

    run_group(
        worker,
        jobs,
        PARAMS,
        Limits(cell_timeout_s=1, max_worker_restarts=restarts),
        emit,
        RestartBudget(restarts),
    )
    return out


def test_a_crashed_batch_is_retried_one_job_at_a_time() -> None:
    jobs = [Job(f"c{i}", "p" * (i + 1)) for i in range(8)]
    jobs[5].fault = "segfault"
    jobs[2].fault = "exception"
    worker = ScriptedWorker()
    out = _drive(worker, jobs)
    assert len(out) == 8
    crashed = {cid: r.cause for cid, r in out.items() if r.status == "crashed"}
    assert crashed == {"c5": "segfault", "c2": "exception"}
    assert out["c5"].stderr_tail == "stderr tail"
    # The jobs that shared a batch with a crash were run again alone; the others once, in their batch.
    assert out["c0"].metrics["attempts"] == 2 and out["c0"].metrics["batch_size"] == 1
    assert out["c2"].metrics["attempts"] == 2
    assert [len(b) for b in worker.batches] == [4, 1, 1, 1, 1, 4, 1, 1, 1, 1]
    # One restart after each death: the batch's and the single retry's.
    assert worker.starts == 3
    # Each batch told the worker what was queued next; the crash then put the isolated retries first.
    assert worker.hints[0] == worker.batches[5]
    assert worker.hints[1:4] == worker.batches[2:5] and worker.hints[4] == worker.batches[5]
    assert worker.hints[-1] is None


def test_each_batch_carries_the_next_one_as_a_hint() -> None:
    worker = ScriptedWorker()
    out = _drive(worker, [Job(f"c{i}", "p" * (i + 1)) for i in range(7)])
    assert len(out) == 7 and {r.status for r in out.values()} == {"finished"}
    batches = [["c0", "c1", "c2", "c3"], ["c4", "c5", "c6"]]
    assert worker.batches == batches  # PARAMS.batch_size is 4
    assert worker.hints == [batches[1], None]


def test_restarts_are_bounded_and_the_rest_is_marked_not_run() -> None:
    jobs = [Job(f"c{i}", "p", fault="killed" if i < 3 else None) for i in range(6)]
    worker = ScriptedWorker()
    out = _drive(worker, jobs, restarts=1)
    assert len(out) == 6
    assert all(r.status == "crashed" for r in out.values())
    not_run = [r for r in out.values() if r.error and r.error.startswith("not run")]
    assert not_run and all(r.cause == "killed" for r in not_run)
    assert worker.starts == 2  # the first start and one restart


def test_a_model_that_does_not_load_fails_its_whole_group() -> None:
    jobs = [Job(f"c{i}", "p") for i in range(5)]
    worker = ScriptedWorker(fail_load=True)
    out = _drive(worker, jobs)
    assert len(out) == 5
    assert {r.cause for r in out.values()} == {"exception"}
    assert all("model failed to load: OSError: no such model" in (r.error or "") for r in out.values())
    assert worker.starts == 1


# -- real worker processes ---------------------------------------------------------------------------------------
def _echo_worker(tmp_path: Path, backend: str, timeout: float = 30) -> ProcessWorker:
    return ProcessWorker(
        Model(backend=backend, name="echo"), "cpu", Limits(cell_timeout_s=timeout), tmp_path / "worker.log"
    )


SIGNAL_FAULTS = [
    ("segfault", "segfault", "Segmentation fault"),  # faulthandler's report survives the death
    ("abort", "abort", "Aborted"),
    ("killed", "killed", "injected fault 'killed'"),
]


def test_a_worker_that_dies_by_a_signal_is_classified_and_restartable(
    tmp_path: Path, echo_backend: str
) -> None:
    worker = _echo_worker(tmp_path, echo_backend)
    worker.start()
    try:
        assert worker.run_batch([Job("ok", "a b c")], PARAMS, 30)[0].output == "c b a"
        for fault, cause, in_tail in SIGNAL_FAULTS:
            with pytest.raises(WorkerCrash) as e:
                worker.run_batch([Job("ok2", "x"), Job("bad", "y", fault=fault)], PARAMS, 30)
            assert e.value.cause == cause, fault
            assert not e.value.worker_alive and not worker.alive, fault
            assert in_tail in e.value.stderr_tail, fault
            assert f"injected fault {fault!r} for cell bad" in e.value.stderr_tail
            worker.start()
            assert worker.run_batch([Job("ok3", "d e f")], PARAMS, 30)[0].output == "f e d", fault
        assert worker.starts == 1 + len(SIGNAL_FAULTS)
    finally:
        worker.stop()


def test_a_hung_worker_is_killed_at_the_deadline(tmp_path: Path, echo_backend: str) -> None:
    worker = _echo_worker(tmp_path, echo_backend)
    worker.start()
    try:
        with pytest.raises(WorkerCrash) as e:
            worker.run_batch([Job("hang", "x", fault="timeout")], PARAMS, 1.0)
        assert e.value.cause == "timeout"
        assert not worker.alive
        assert "injected fault 'timeout'" in e.value.stderr_tail
    finally:
        worker.stop()


def test_an_exception_leaves_the_worker_serving(tmp_path: Path, echo_backend: str) -> None:
    worker = _echo_worker(tmp_path, echo_backend)
    worker.start()
    try:
        for fault, cause in (("exception", "exception"), ("cuda_oom", "cuda_oom")):
            with pytest.raises(WorkerCrash) as e:
                worker.run_batch([Job("bad", "x", fault=fault)], PARAMS, 30)
            assert e.value.cause == cause and e.value.worker_alive
            assert "Traceback" in e.value.stderr_tail
        assert worker.run_batch([Job("ok", "g h i")], PARAMS, 30)[0].output == "i h g"
        assert worker.starts == 1
    finally:
        proc = worker.proc
        worker.stop()
    assert proc.exitcode == 0  # it left when asked (without the interpreter's teardown), not killed


def test_a_model_that_fails_to_load(tmp_path: Path) -> None:
    worker = _echo_worker(tmp_path, "conftest:NoSuchBackend")
    with pytest.raises(LoadFailed) as e:
        worker.start()
    assert e.value.cause == "exception"
    assert "NoSuchBackend" in e.value.error
    assert "Traceback" in e.value.stderr_tail
    assert not worker.alive


def test_local_executor_shares_groups_across_devices_and_reports_in_the_calling_thread(
    tmp_path: Path, echo_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two pretend GPUs: the echo backend ignores the device, so this runs anywhere.
    monkeypatch.setattr("runner.generation.executors.local.visible_gpus", lambda: ["0", "1"])
    executor = LocalExecutor(None, Limits(cell_timeout_s=30), log_dir=tmp_path)
    assert [s[1] for s in executor.slots()] == ["0", "1"]
    groups = {
        f"m{g}": (
            Model(backend=echo_backend, name=f"m{g}"),
            [Job(f"m{g}-{i}", f"p {g} {i}") for i in range(5)],
        )
        for g in range(3)
    }
    seen: dict[str, JobResult] = {}
    threads = set()

    def on_result(batch: list[JobResult]) -> None:
        threads.add(threading.current_thread().name)
        seen.update({r.cell_id: r for r in batch})

    executor.run(groups, Generation(max_new_tokens=3, batch_size=2), on_result)
    assert set(seen) == {f"m{g}-{i}" for g in range(3) for i in range(5)}
    assert threads == {threading.main_thread().name}
    assert seen["m1-4"].output == "4 1 p"
    assert len({r.metrics["worker_pid"] for r in seen.values()}) == 3  # one worker per group
    assert len(list(tmp_path.glob("worker*.log"))) == 3
    assert not any(w.alive for w in executor.workers)


def test_local_executor_without_gpus_runs_one_cpu_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runner.generation.executors.local.visible_gpus", lambda: [])
    assert LocalExecutor(None, Limits()).slots() == [("cpu", None)]
    assert LocalExecutor([], Limits()).slots() == [("cpu", "")]


DEVICE_CHECK = """
import json, os, sys
import runner.generation.executors.local as local
from runner.spec import Limits
out = {}
os.environ["CUDA_VISIBLE_DEVICES"] = "0,2"
out["named"] = local.visible_gpus()
del os.environ["CUDA_VISIBLE_DEVICES"]
local.GPU_DRIVER_FILES = ()
out["no_driver"] = local.visible_gpus()
local.GPU_DRIVER_FILES = (sys.executable,)  # a file that exists: as if a driver were installed
out["cpu_only"] = local.LocalExecutor(None, Limits(), cpu_only=True).slots()
out["torch"] = "torch" in sys.modules
print(json.dumps(out))
"""


def test_devices_are_decided_without_torch_where_the_environment_answers() -> None:
    """Importing torch to count GPUs cost `pov run` 1.5 s before its worker started: CUDA_VISIBLE_DEVICES,
    the absence of any GPU driver and a CPU-only spec each answer without it."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run([sys.executable, "-c", DEVICE_CHECK], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "named": ["0", "2"],
        "no_driver": [],
        "cpu_only": [["cpu", None]],
        "torch": False,
    }


# -- latency: per cell where the backend times rows, per batch (and said so) where it cannot ----------------------
class TimesRows(InProcessEcho):
    """Rows that finished at different moments of one 2-second generate call."""

    def generate(self, prompts: list[str], params: Any) -> list[Any]:
        from runner.generation.backends.base import GenerationOut

        rows = [(2, 0.5), (8, 2.0)]
        return [
            GenerationOut(p.upper(), len(p), n, lat, n / lat, False, batch_latency_s=2.0)
            for p, (n, lat) in zip(prompts, rows, strict=True)
        ]


def test_serve_batch_keeps_each_cells_latency_apart_from_its_batchs() -> None:
    a, b = (r.metrics for r in serve_batch(TimesRows(), [Job("a", "one"), Job("b", "two")], PARAMS))
    assert (a["latency_s"], b["latency_s"]) == (0.5, 2.0)
    assert (a["tokens_per_s"], b["tokens_per_s"]) == (4.0, 4.0)
    assert a["batch_latency_s"] == b["batch_latency_s"] == 2.0 and a["batch_size"] == 2.0
    assert a["batch_tokens_per_s"] == (2 + 8) / 2.0
    assert a["latency_per_cell"] == b["latency_per_cell"] == 1.0


def test_serve_batch_says_so_when_a_backend_can_only_time_the_batch() -> None:
    # InProcessEcho gives no batch_latency_s: its latency_s is the batch's, which each cell keeps as such.
    a, b = (r.metrics for r in serve_batch(InProcessEcho(), [Job("a", "one"), Job("b", "two")], PARAMS))
    assert a["latency_s"] == b["latency_s"] == a["batch_latency_s"] == 0.5
    assert a["latency_per_cell"] == b["latency_per_cell"] == 0.0
    assert a["batch_tokens_per_s"] == (2 + 2) / 0.5


def test_a_runs_generate_time_counts_each_batch_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    from conftest import RecordingTracker, StubRetriever, gen_spec

    from runner.run.engine import run_experiment
    from runner.spec import expand, load_spec

    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=3, personas=2, pov_sets=1))
    tracker = RecordingTracker()
    summary = run_experiment(exp, expand(exp), tracker, retriever=StubRetriever(), quiet=True)
    results = list(tracker.results.values())
    assert len(results) == 6 and {r.status for r in results} == {"finished"}
    batches: dict[tuple[float, float], list[dict[str, float]]] = {}
    for r in results:
        batches.setdefault((r.started_at, r.ended_at), []).append(r.metrics)
    assert sorted(len(b) for b in batches.values()) == [2, 4]  # batch_size 4
    for cells in batches.values():
        assert len({m["batch_latency_s"] for m in cells}) == 1
        assert all(m["latency_per_cell"] == 1.0 for m in cells)  # the transformers backend times rows
        assert all(0 < m["latency_s"] <= m["batch_latency_s"] for m in cells)
    once = sum(cells[0]["batch_latency_s"] for cells in batches.values())
    assert summary.generate_time_s == pytest.approx(once, rel=1e-9)
