"""Backend `openai`: an OpenAI-compatible inference server generates (vLLM, SGLang, llama.cpp, Ollama at
`base_url`, or a llama.cpp server pov-runner starts: `server:`, runner.generation.llamacpp_server).

The run's own process talks to the server; no worker process loads anything. Each cell is one request, up to
`max_concurrency` in flight, so the server's continuous batching does the batching: the batch after the
current one is sent as slots free up, and results still come back batch by batch in the cells' order. A
cell's latency is its own request's, from sending to the answer (retries included).

A crash is data, as with local workers; each request's outcome is its own cell's:

| what happened                                          | cause                             |
|--------------------------------------------------------|-----------------------------------|
| a managed server died (its requests broke)             | how it died: `killed` (SIGKILL), `segfault`, `abort`; it is restarted (`limits.max_worker_restarts`) |
| an external server refused the connection              | `server_died`; the cells after it fail at once, not each at its timeout |
| HTTP 4xx/5xx                                           | `exception` with the server's message; `cuda_oom` when that says out of memory |
| no answer by the deadline (`request_timeout_s`, default `limits.cell_timeout_s`) | `timeout` |
| a 200 that is not an answer (not JSON, no choices)     | `exception`                       |

HTTP 429 and 503 and a connection reset (the server alive) are retried with backoff, at most 3 times within
the deadline; each retry is written to the worker log and counted in the cell's `retries` metric.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runner.generation.backends.openai_http import Call, Failure, error_message
from runner.generation.backends.openai_requests import SERVER_DIED, RequestSender, Ticket
from runner.generation.jobs import Job, JobResult, LoadFailed, Stopped
from runner.generation.llamacpp_server import ManagedServer, Settings, default_threads

if TYPE_CHECKING:
    from collections.abc import Callable

    from runner.spec import Generation, Limits, Model


def managed_settings(model: Model, threads: int | None = None) -> Settings:
    """How to start the llama.cpp server of a model with a `server:` block (its GGUF already resolved)."""
    assert model.server is not None
    return Settings(
        gguf=model.server.gguf,
        alias=model.name,
        ctx_per_slot=model.max_seq_length,
        parallel=model.server.parallel or model.max_concurrency,
        threads=model.server.threads or threads or default_threads(),
        gpu_layers=0 if model.device == "cpu" else -1,
    )


class OpenAIWorker(RequestSender):
    """The executor's handle on one OpenAI-compatible server (a runner.generation.backends.RemoteBackend)."""

    def __init__(
        self, model: Model, limits: Limits, log_path: Path, should_stop: Callable[[], bool] | None = None
    ) -> None:
        self.model, self.limits, self.log_path = model, limits, log_path
        self.should_stop = should_stop or (lambda: False)
        self.server: ManagedServer | None = None
        if model.server is not None:
            self.server = ManagedServer(managed_settings(model), log_path, model.server.startup_timeout_s)
        self.url = model.base_url or ""
        self.key: str | None = None
        self.key_name = model.api_key_env or "the managed server's key"
        self.info: dict[str, float] = {}
        self.restarts = 0
        self._tickets: dict[str, Ticket] = {}
        self._queue: queue.Queue[Ticket | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._cv = threading.Condition()
        self._ready = threading.Event()
        """The server answers: requests may go (cleared while a managed server is restarted)."""
        self._closing = threading.Event()
        self._down: str | None = None
        self._begin_error: LoadFailed | None = None
        self._started = False
        self._log_lock = threading.Lock()
        self._restart_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Started and not stopped. A managed server that dies is restarted by `run_batch` itself (counted
        against limits.max_worker_restarts), so that the cells it was answering are recorded with the cause
        and the others go to the new server."""
        return self._started and not self._closing.is_set()

    def begin(self) -> None:
        """Spawn a managed server now, so that its model loads while the run prepares its prompts."""
        if self.server is not None:
            try:
                self.server.begin()
            except LoadFailed as e:
                self._begin_error = e  # start() raises it, where the pool expects a failed load

    def start(self) -> dict[str, float]:
        started = time.monotonic()
        self._closing.clear()
        if self._begin_error is not None:
            error, self._begin_error = self._begin_error, None
            raise error
        if self.server is not None:
            boot = self.server.start()
            self.url, self.key = f"{self.server.url}/v1", self.server.api_key
            self._note(
                f"llama.cpp server pid {self.server.pid} (xllamacpp {self.server.version}) answers at {self.url}"
            )
        else:
            boot = 0.0
            self.key = self._env_key()
            self._probe_or_fail()
        while len(self._threads) < self.model.max_concurrency:
            thread = threading.Thread(
                target=self._serve_loop, name=f"pov-http-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._ready.set()
        self._started = True
        waited = time.monotonic() - started
        self.info = {"worker_start_s": waited, "worker_boot_s": max(boot, waited)}
        return self.info

    def _env_key(self) -> str | None:
        name = self.model.api_key_env
        if name is None:
            return None
        key = os.environ.get(name)
        if not key:
            raise LoadFailed(
                "exception",
                f"the environment variable {name} (models' api_key_env) is not set",
                "",
                worker_alive=False,
            )
        return key

    def _probe_or_fail(self) -> None:
        try:
            status, _, data = Call(self.url, self.key).send(
                "GET", "/models", None, min(10.0, self._timeout_s())
            )
        except Failure as f:
            cause = (
                SERVER_DIED
                if f.kind in ("refused", "reset")
                else "timeout"
                if f.kind == "timeout"
                else "exception"
            )
            raise LoadFailed(
                cause, f"the server at {self.url} does not answer: {f.message}", "", worker_alive=False
            ) from None
        if status != 200:
            message = self._scrub(error_message(data))
            raise LoadFailed(
                "exception",
                f"the server at {self.url} answers HTTP {status} to /models: {message}",
                "",
                worker_alive=False,
            )
        self._down = None

    def stop(self) -> None:
        self._close(graceful=True)

    def terminate(self) -> None:
        self._close(graceful=False)

    def kill(self) -> None:
        self._close(graceful=False)

    def _close(self, graceful: bool) -> None:
        self._closing.set()
        self._ready.set()  # wakes the request threads waiting for a restart; they see _closing and leave
        with self._cv:
            tickets = list(self._tickets.values())
            self._tickets.clear()
            self._cv.notify_all()
        for ticket in tickets:
            if ticket.call is not None:
                ticket.call.abort()
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []
        self._queue = queue.Queue()
        self._ready.clear()
        self._started = False
        if self.server is not None:
            self.server.stop() if graceful else self.server.kill()

    # -- batches -------------------------------------------------------------------------------------------
    def run_batch(
        self, jobs: list[Job], params: Generation, timeout_s: float, ahead: list[Job] | None = None
    ) -> list[JobResult]:
        """Send the batch (and `ahead`, behind it), wait for every job of the batch, in the jobs' order."""
        if self._closing.is_set() or self.should_stop():
            raise Stopped()
        failed = self._ensure_server()
        if failed is not None:
            results = [self._crashed(job, failed.cause, failed.error, failed.stderr_tail) for job in jobs]
            with self._cv:
                for job, result in zip(jobs, results, strict=True):
                    sent = self._tickets.pop(job.cell_id, None)  # sent ahead, and answered or not since
                    if sent is not None and sent.result is not None:
                        result = sent.result
                    results[jobs.index(job)] = result
                    if sent is not None and sent.result is None:
                        sent.result = result  # its request thread, if it ever gets to it, leaves it
            return results
        started = time.monotonic()
        if self.server is not None:
            self.server.reset_peak_rss()
        tickets = [self._submit(job, params) for job in jobs]
        for job in ahead or []:
            self._submit(job, params)
        gpu_peak = self._wait(tickets)
        batch_s = time.monotonic() - started
        results = [t.result for t in tickets if t.result is not None]
        shared = {
            "batch_size": float(len(jobs)),
            "batch_latency_s": batch_s,
            "batch_tokens_per_s": sum(r.metrics.get("new_tokens", 0.0) for r in results) / batch_s
            if batch_s > 0
            else 0.0,
            "latency_per_cell": 1.0,
        }
        peak = self.server.peak_rss_mb() if self.server is not None else None
        if peak is not None:
            shared["host_rss_mb"] = peak
        if gpu_peak is not None:
            shared["gpu_peak_allocated_mb"] = shared["gpu_peak_reserved_mb"] = gpu_peak
        with self._cv:
            for t in tickets:
                self._tickets.pop(t.job.cell_id, None)
        for r in results:
            if r.status == "finished":
                r.metrics.update(shared)
        return results

    def _ensure_server(self) -> LoadFailed | None:
        """Bring a dead managed server back (bounded), or re-check an external one that stopped answering.
        Returns why it cannot serve, for the batch's cells; None when it can."""
        if self.server is None:
            if self._down is None:
                return None
            try:
                self._probe_or_fail()
            except LoadFailed:
                return LoadFailed(SERVER_DIED, f"not sent: {self._down}", "", worker_alive=False)
            self._note(f"the server at {self.url} answers again")
            return None
        with self._restart_lock:
            if self.server.alive and self._ready.is_set():
                return None
            return self._restart()

    def _restart(self) -> LoadFailed | None:
        assert self.server is not None
        if self.restarts >= self.limits.max_worker_restarts:
            return LoadFailed(
                self.server.cause(),
                f"not run: the llama.cpp server died and was restarted {self.restarts} times "
                "(limits.max_worker_restarts)",
                self.server.log_tail(),
                worker_alive=False,
            )
        self.restarts += 1
        self._note(
            f"restarting the llama.cpp server (it died of {self.server.death()}; restart {self.restarts})"
        )
        self._ready.clear()
        try:
            self.server.kill()
            self.start()
        except LoadFailed as e:
            return e
        return None

    def _submit(self, job: Job, params: Generation) -> Ticket:
        with self._cv:
            ticket = self._tickets.get(job.cell_id)
            if ticket is None:
                ticket = self._tickets[job.cell_id] = Ticket(job, params)
                self._queue.put(ticket)
        return ticket

    def _wait(self, tickets: list[Ticket]) -> float | None:
        """Until every ticket has its result: abandons the overdue, restarts a server that died, and samples
        the server's GPU memory (the batch's peak, MiB; None without a GPU)."""
        gpu_peak: float | None = None
        next_sample = 0.0
        while True:
            with self._cv:
                if all(t.result is not None for t in tickets):
                    return gpu_peak
                self._cv.wait(0.1)
            if self.should_stop() or self._closing.is_set():
                self.terminate()
                raise Stopped()
            now = time.monotonic()
            with self._cv:
                overdue = [
                    t for t in self._tickets.values() if t.result is None and t.deadline and now > t.deadline
                ]
            for t in overdue:
                self._finish(t, self._crashed(t.job, "timeout", self._timeout_message(), retries=t.retries))
                if t.call is not None:
                    t.call.abort()
            if self.server is not None and not self._ready.is_set() and not self._closing.is_set():
                failed = self._ensure_server()
                if failed is not None:
                    for t in tickets:
                        self._finish(t, self._crashed(t.job, failed.cause, failed.error, failed.stderr_tail))
            if self.server is not None and now >= next_sample:
                used = self.server.gpu_memory_mb()
                if used is not None:
                    gpu_peak = max(gpu_peak or 0.0, used)
                next_sample = now + 1.0
