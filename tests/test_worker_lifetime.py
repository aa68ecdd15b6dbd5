"""A worker process never outlives the process that started it: a `pov run` killed with SIGKILL in the middle of
a long batch leaves no worker (holding a GPU's memory) and no multiprocessing resource tracker behind.

Real processes throughout: a parent script (run with subprocess) starts a real ProcessWorker whose backend is
one of the test doubles below (loaded by its `module:Class` path), gives it a batch that does not end, and is
killed with SIGKILL once the worker is generating. The doubles wait in native code, where the worker's Python
threads get no say: one holding the GIL (only the kernel's parent-death signal can end it), one releasing it
with that signal switched off (the portable watchdog thread must end it).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PR_SET_PDEATHSIG = 1
GONE_WITHIN_S = 10.0
STARTED_WITHIN_S = 90.0


# -- test doubles, loaded in the worker by their `test_worker_lifetime:Class` path ------------------------------
class _Generating:
    """Writes its model `name` (a file path) once a batch is being generated, then waits there for a long time."""

    def __init__(self, model: Any, device: str | None = None) -> None:
        self.device = "cpu"
        self.marker = Path(model.name)

    def generate(self, prompts: list[str], params: Any) -> list[Any]:
        self.marker.write_text(str(os.getpid()))
        self.wait()
        raise AssertionError("the batch was meant to outlast the test")

    def wait(self) -> None:
        raise NotImplementedError

    def info(self) -> dict[str, float]:
        return {}


class HoldsTheGil(_Generating):
    """Sleeps in libc with the GIL held (ctypes.PyDLL keeps it): no Python thread of the worker can run."""

    def wait(self) -> None:
        ctypes.PyDLL(None).sleep(300)


class NoDeathSignal(_Generating):
    """Switches the parent-death signal off, then sleeps in libc with the GIL released (ctypes.CDLL lets it go):
    whatever ends this worker is the watchdog thread."""

    def __init__(self, model: Any, device: str | None = None) -> None:
        super().__init__(model, device)
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)

    def wait(self) -> None:
        ctypes.CDLL(None).sleep(300)


# -- the parent: a script of its own, so that the test can SIGKILL it ------------------------------------------
PARENT = """
import json, sys, threading
from pathlib import Path
from multiprocessing import resource_tracker

from runner.generation.executors.process import ProcessWorker
from runner.generation.jobs import Job
from runner.spec import Generation, Limits, Model

backend, marker, log, pids, from_thread = sys.argv[1:6]
worker = ProcessWorker(Model(backend=backend, name=marker), "cpu", Limits(cell_timeout_s=600), Path(log))
if from_thread == "1":
    # Started from a thread that is gone before the batch: the worker must not die with that thread.
    t = threading.Thread(target=worker.start)
    t.start()
    t.join()
else:
    worker.start()
tracker = resource_tracker._resource_tracker._pid
Path(pids).write_text(json.dumps({"worker": worker.proc.pid, "tracker": tracker}))
params = Generation(max_new_tokens=3, batch_size=2)
out = worker.run_batch([Job("a", "one two three"), Job("b", "four five six")], params, 600)
print(json.dumps([r.output for r in out]), flush=True)
worker.stop()
"""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie no one has reaped yet is dead)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(cond: Any, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


def start_parent(
    tmp_path: Path, backend: str, from_thread: bool = False
) -> tuple[subprocess.Popen[str], Path]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
        "HF_HUB_OFFLINE": "1",
    }
    args = [backend, str(tmp_path / "generating"), str(tmp_path / "worker.log"), str(tmp_path / "pids.json")]
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, *args, "1" if from_thread else "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a signal to it never reaches pytest
    )
    return proc, tmp_path / "pids.json"


def kill_mid_batch(tmp_path: Path, backend: str) -> dict[str, int]:
    parent, pids_file = start_parent(tmp_path, backend)
    marker = tmp_path / "generating"
    try:
        started = wait_until(
            lambda: (marker.exists() and pids_file.exists()) or parent.poll() is not None, STARTED_WITHIN_S
        )
        assert started and parent.poll() is None, (parent.communicate(timeout=10)[0], _log(tmp_path))
        pids: dict[str, int] = json.loads(pids_file.read_text())
        assert int(marker.read_text()) == pids["worker"] and alive(pids["worker"])
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
    except BaseException:
        parent.kill()
        parent.wait(timeout=10)
        raise
    return pids


def _log(tmp_path: Path) -> str:
    log = tmp_path / "worker.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _reap(pid: int) -> None:
    """Leave nothing behind even when the test fails."""
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_holding_the_gil_in_native_code_dies_with_its_killed_parent(tmp_path: Path) -> None:
    pids = kill_mid_batch(tmp_path, "test_worker_lifetime:HoldsTheGil")
    try:
        assert wait_until(lambda: not alive(pids["worker"]), GONE_WITHIN_S), (
            f"worker {pids['worker']} still alive {GONE_WITHIN_S} s after its parent was killed"
        )
        # The tracker ends once no process holds its pipe: the worker was the last one.
        assert wait_until(lambda: not alive(pids["tracker"]), GONE_WITHIN_S), "resource tracker still alive"
    finally:
        _reap(pids["worker"])


def test_the_watchdog_ends_a_worker_in_native_code_when_its_parent_is_killed(tmp_path: Path) -> None:
    pids = kill_mid_batch(tmp_path, "test_worker_lifetime:NoDeathSignal")
    try:
        assert wait_until(lambda: not alive(pids["worker"]), GONE_WITHIN_S), (
            f"worker {pids['worker']} still alive {GONE_WITHIN_S} s after its parent was killed"
        )
        assert wait_until(lambda: not alive(pids["tracker"]), GONE_WITHIN_S), "resource tracker still alive"
        assert "parent" in _log(tmp_path)  # it said why it left
    finally:
        _reap(pids["worker"])


def test_a_worker_started_from_a_thread_that_ended_keeps_serving(tmp_path: Path) -> None:
    # The kernel's parent-death signal follows the thread that forked, not the process: a worker begun by a
    # slot thread must survive that thread (pov serve keeps workers loaded after a run's threads are gone).
    parent, _ = start_parent(tmp_path, "conftest:EchoBackend", from_thread=True)
    try:
        out, _ = parent.communicate(timeout=STARTED_WITHIN_S)
    finally:
        parent.kill()
    assert parent.returncode == 0, (out, _log(tmp_path))
    assert json.loads(out.strip().splitlines()[-1]) == ["three two one", "six five four"]
