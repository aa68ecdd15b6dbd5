"""The parent's handle on one worker process (runner.generation.worker.worker_main): start it, send it batches, wait
with a deadline, and turn its death into a crash cause with the tail of its stderr."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from runner.generation.jobs import Job, JobResult, LoadFailed, Stopped, WorkerCrash, classify_exit
from runner.generation.worker import LOAD_TIMEOUT_S, file_size, read_tail, worker_main

if TYPE_CHECKING:
    from runner.spec import Generation, Limits, Model


class ProcessWorker:
    """One worker process for one model on one device; restartable after a crash.

    From its first death on it keeps a spare process that does its imports (torch, transformers, unsloth:
    seconds that a restart would otherwise wait for) and loads the model only when it takes over. A worker
    that died once tends to die again: its crashed batch is retried one job at a time, culprit included.
    The spare touches no GPU memory before it takes over (beyond a CUDA context, if its imports make one)."""

    def __init__(
        self,
        model: Model,
        device: str | None,
        limits: Limits,
        stderr_path: Path,
        *,
        cuda_visible: str | None = None,
        should_stop: Any = None,
    ) -> None:
        self.model, self.device, self.limits = model, device, limits
        self.stderr_path, self.cuda_visible = stderr_path, cuda_visible
        self.should_stop = should_stop or (lambda: False)
        self.proc: Any = None
        self.conn: Any = None
        self.info: dict[str, float] = {}
        self.starts = 0
        self._batch = 0
        self._spare: tuple[Any, Any] | None = None
        self._want_spare = False
        self._loading: tuple[int, float] | None = None
        """(stderr offset, monotonic time) of a start begun and not yet waited for."""
        self._lock = threading.RLock()

    @property
    def alive(self) -> bool:
        """Loaded and running: a worker still loading (begun, not started) is not alive yet."""
        return self.proc is not None and self._loading is None and self.proc.is_alive()

    def _spawn(self) -> tuple[Any, Any]:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=worker_main,
            name=f"pov-worker-{self.stderr_path.stem}",
            daemon=True,
            args=(
                child_conn,
                self.model.model_dump(mode="json"),
                self.device,
                self.cuda_visible,
                self.limits.gpu_memory_gb,
                str(self.stderr_path),
                os.getpid(),  # the worker ends itself when this process goes (worker.die_with_parent)
            ),
        )
        start_from_lasting_thread(proc.start)
        child_conn.close()  # so that the child's death reads as end-of-file here
        return proc, parent_conn

    def begin(self) -> None:
        """Start the worker without waiting for it: spawn (or take the spare) and ask it to load the model.
        The run prepares its prompts meanwhile; `start` waits for the model."""
        if self._loading is not None:
            return
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        offset = file_size(self.stderr_path)
        spare, self._spare = self._spare, None
        if spare is not None and spare[0].is_alive():
            self.proc, self.conn = spare
        else:
            _end(spare)
            self.proc, self.conn = self._spawn()
        self.starts += 1
        self._loading = (offset, time.monotonic())
        if self._want_spare:
            # The next spare imports while this one loads the model, so it is ready for the next crash.
            self._spare = self._spawn()
        with contextlib.suppress(OSError, ValueError):  # dead already: start() reads why
            self.conn.send(("load",))  # read by the child once its imports are done

    def start(self) -> dict[str, float]:
        self.begin()
        assert self._loading is not None
        (offset, booted), self._loading = self._loading, None
        waited = time.monotonic()
        try:
            msg: tuple[Any, ...] = ("warm",)
            while msg[0] == "warm":
                msg = self._wait(max(LOAD_TIMEOUT_S, self.limits.cell_timeout_s), offset, "loading the model")
        except WorkerCrash as c:
            raise LoadFailed(c.cause, c.error, c.stderr_tail, worker_alive=False) from None
        except (OSError, ValueError):
            self._raise_dead(offset, load=True)
        if msg[0] != "ready":
            self.kill()
            raise LoadFailed(msg[1], msg[2], read_tail(self.stderr_path, offset), worker_alive=False)
        self.device = msg[1]
        now = time.monotonic()
        # worker_start_s: what the run waited for (spawn, imports, model load not hidden behind its own
        # preparation); worker_boot_s: the whole start, from spawn to a loaded model.
        self.info = {**msg[2], "worker_start_s": now - waited, "worker_boot_s": now - booted}
        return self.info

    def run_batch(
        self, jobs: list[Job], params: Generation, timeout_s: float, ahead: list[Job] | None = None
    ) -> list[JobResult]:
        try:
            return self._run_batch(jobs, params, timeout_s, ahead)
        except WorkerCrash as crash:
            if not crash.worker_alive and not self._want_spare:
                self._want_spare = True
                self._spare = self._spawn()  # imports while the crash is handled
            raise

    def _run_batch(
        self, jobs: list[Job], params: Generation, timeout_s: float, ahead: list[Job] | None
    ) -> list[JobResult]:
        self._batch += 1
        offset = file_size(self.stderr_path)
        try:
            self.conn.send(("batch", self._batch, jobs, params.model_dump(mode="json"), ahead))
        except (OSError, ValueError):
            self._raise_dead(offset)
        deadline = time.monotonic() + timeout_s
        shape: dict[str, float] = {}
        try:
            msg = self._wait(timeout_s, offset, f"a batch of {len(jobs)}", deadline)
            while msg[0] == "shape":  # the batch's size and padded length, sent before it generates
                shape = dict(msg[2])
                msg = self._wait(timeout_s, offset, f"a batch of {len(jobs)}", deadline)
        except WorkerCrash as crash:  # died or hung: what it said of the batch is all there is
            crash.measured = {**shape, **crash.measured}
            raise
        if msg[0] == "results":
            return list(msg[2])
        _, _, cause, error, fatal, *measured = msg
        if fatal:
            self.proc.join(10)
            self.kill()
        raise WorkerCrash(
            cause,
            error,
            read_tail(self.stderr_path, offset),
            worker_alive=self.alive,
            measured={**shape, **(measured[0] if measured else {})},
        )

    def _wait(
        self, timeout_s: float, offset: int, doing: str, deadline: float | None = None
    ) -> tuple[Any, ...]:
        deadline = deadline if deadline is not None else time.monotonic() + timeout_s
        while True:
            if self.should_stop():
                self.kill()
                raise Stopped()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerCrash(
                    "timeout",
                    f"no answer after {timeout_s:.1f} s {doing}; the worker was killed",
                    read_tail(self.stderr_path, offset),
                    worker_alive=False,
                )
            try:
                conn = self.conn
                if conn is None:
                    raise OSError("connection closed")
                if conn.poll(min(remaining, 0.25)):
                    return tuple(conn.recv())
            except (EOFError, OSError):
                if self.should_stop():
                    raise Stopped() from None  # we killed it: not a crash of its cells
                self._raise_dead(offset)
            if not self.proc.is_alive():
                # A grandchild holding the pipe open can hide the end-of-file: trust the process table.
                self._raise_dead(offset)

    def _raise_dead(self, offset: int, load: bool = False) -> NoReturn:
        self.proc.join(10)
        cause, error = classify_exit(self.proc.exitcode)
        self._close()
        raise (LoadFailed if load else WorkerCrash)(
            cause, error, read_tail(self.stderr_path, offset), worker_alive=False
        )

    def kill(self) -> None:
        with self._lock:  # the run's Ctrl-C handler and the worker's own thread may both get here
            if self.proc is not None and self.proc.is_alive():
                self.proc.kill()
                self.proc.join(10)
            self._loading = None
            self._close()

    def stop(self) -> None:
        """Ask the worker to exit (it frees its GPU), killing it if it does not; end the spare."""
        if self.proc is not None and self.proc.is_alive() and self._loading is None:
            try:
                self.conn.send(("stop",))
                self.proc.join(30)
            except (OSError, ValueError):
                pass
        self.terminate()

    def terminate(self) -> None:
        """Kill the worker and its spare now."""
        self.kill()
        spare, self._spare = self._spare, None
        _end(spare)

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(OSError):  # closed already by the other thread
                conn.close()


def _end(pair: tuple[Any, Any] | None) -> None:
    if pair is None:
        return
    proc, conn = pair
    if proc.is_alive():
        proc.kill()
        proc.join(10)
    conn.close()


# -- starting workers ---------------------------------------------------------------------------------------------
_starts: queue.SimpleQueue[tuple[Callable[[], None], Future[None]]] = queue.SimpleQueue()
_starter: threading.Thread | None = None
_starter_lock = threading.Lock()


def start_from_lasting_thread(start: Callable[[], None]) -> None:
    """Run `start` (a Process.start) in a thread that lives as long as this process.

    A worker asks the kernel for SIGKILL when its parent dies (worker.die_with_parent), and Linux sends it
    when the *thread* that forked the worker ends, not the process: a worker begun by a slot thread (which
    ends with its run, while `pov serve` keeps the worker loaded) would die with that thread. The main thread
    lasts as long as the process; every other thread hands its starts to one thread that never ends."""
    if threading.current_thread() is threading.main_thread():
        start()
        return
    global _starter
    with _starter_lock:
        if _starter is None:
            _starter = threading.Thread(target=_starter_loop, name="pov-worker-starter", daemon=True)
            _starter.start()
    done: Future[None] = Future()
    _starts.put((start, done))
    done.result()


def _starter_loop() -> None:
    while True:
        start, done = _starts.get()
        try:
            start()
        except BaseException as e:  # handed to the caller's thread, which raises it there
            done.set_exception(e)
        else:
            done.set_result(None)
