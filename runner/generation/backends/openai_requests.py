"""Backend `openai`, one request per cell: the threads that send them (up to `max_concurrency` at once), and
how each request's outcome becomes its cell's result: an answer, a retry (HTTP 429 and 503, a reset
connection: at most MAX_RETRIES, within the cell's deadline), or a crash with its cause (the table in
runner.generation.backends.openai_api). `RequestSender` is the request side of `OpenAIWorker`; the batch side
(what is sent when, the server's lifecycle) is there.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runner.generation.backends.openai_http import (
    BACKOFF_S,
    MAX_RETRIES,
    RETRYABLE_STATUS,
    Call,
    Failure,
    error_message,
    http_cause,
    read_answer,
    request_body,
    retry_after_s,
)
from runner.generation.jobs import Job, JobResult

if TYPE_CHECKING:
    from runner.generation.llamacpp_server import Incarnation, ManagedServer
    from runner.spec import Generation, Limits, Model

SERVER_DIED = "server_died"
"""The cause of a cell an external server did not answer because it stopped listening."""
SIGNAL_FAULTS = {"segfault": signal.SIGSEGV, "abort": signal.SIGABRT, "killed": signal.SIGKILL}
"""Faults (`faults:` in a spec) injected for real into a managed server: the signal, while requests run."""


@dataclass
class Ticket:
    """One job on its way to the server: its request, its deadline, and (once known) its result."""

    job: Job
    params: Generation
    sent_at: float = 0.0
    sent_mono: float | None = None
    deadline: float | None = None
    call: Call | None = None
    incarnation: Incarnation | None = None
    """The managed server process the request went to (it may die and be replaced meanwhile)."""
    retries: list[str] = field(default_factory=list)
    result: JobResult | None = None


class RequestSender:
    """The request side of OpenAIWorker: what its request threads run, and the results they settle."""

    model: Model
    limits: Limits
    log_path: Path
    server: ManagedServer | None
    url: str
    key: str | None
    key_name: str
    _cv: threading.Condition
    _ready: threading.Event
    _closing: threading.Event
    _down: str | None
    _queue: queue.Queue[Ticket | None]
    _log_lock: threading.Lock
    _restart_lock: threading.Lock

    # -- requests (one thread per concurrent request) ------------------------------------------------------
    def _serve_loop(self) -> None:
        work = self._queue
        while True:
            ticket = work.get()
            if ticket is None:
                return
            while not self._ready.wait(0.2):
                if self._closing.is_set():
                    return
            if self._closing.is_set():
                return
            if ticket.result is None:
                try:
                    self._serve(ticket)
                except Exception as e:  # a bug here must cost one cell, not a thread and the run's wait
                    self._finish(ticket, self._crashed(ticket.job, "exception", f"{type(e).__name__}: {e}"))

    def _timeout_s(self) -> float:
        return min(self.model.request_timeout_s or float("inf"), self.limits.cell_timeout_s)

    def _timeout_message(self) -> str:
        return f"no answer from {self.url} within {self._timeout_s():g} s"

    def _serve(self, t: Ticket) -> None:
        path, body = request_body(self.model, t.job.prompt, t.params)
        if t.sent_mono is None:
            t.sent_at, t.sent_mono = time.time(), time.monotonic()
            t.deadline = t.sent_mono + self._timeout_s()
        assert t.deadline is not None
        if t.job.fault is not None and self._inject(t):
            return
        while True:
            while not self._ready.wait(0.2):  # a managed server being restarted
                if self._closing.is_set() or t.result is not None:
                    return None
            if t.result is not None:
                return None  # settled meanwhile (its deadline, or a restart that failed)
            if self.server is None and self._down is not None:
                return self._finish(
                    t, self._crashed(t.job, SERVER_DIED, f"not sent: {self._down}", retries=t.retries)
                )
            remaining = t.deadline - time.monotonic()
            if remaining <= 0:
                return self._finish(
                    t, self._crashed(t.job, "timeout", self._timeout_message(), retries=t.retries)
                )
            t.call = Call(self.url, self.key)
            t.incarnation = self.server.current if self.server is not None else None
            try:
                status, headers, data = t.call.send("POST", path, body, remaining)
            except Failure as f:
                if self._failed(t, f):
                    return
                continue
            if status == 200:
                try:
                    answer = read_answer(data, chat=path == "/chat/completions")
                except Failure as f:
                    return self._finish(
                        t,
                        self._crashed(
                            t.job,
                            "exception",
                            f"malformed response from {self.url}{path}: {self._scrub(f.message)}",
                            retries=t.retries,
                        ),
                    )
                latency = time.monotonic() - t.sent_mono
                metrics = {
                    "latency_s": latency,
                    "prompt_tokens": float(answer.prompt_tokens),
                    "new_tokens": float(answer.new_tokens),
                    "tokens_per_s": answer.new_tokens / latency if latency > 0 else 0.0,
                    "prompt_truncated": 0.0,
                    "retries": float(len(t.retries)),
                    **answer.timings,
                }
                result = JobResult(
                    t.job.cell_id,
                    "finished",
                    output=answer.text,
                    metrics=metrics,
                    started_at=t.sent_at,
                    ended_at=time.time(),
                )
                return self._finish(t, result)
            message = self._scrub(error_message(data))
            if status in RETRYABLE_STATUS and self._retry(
                t, f"HTTP {status}: {message}", retry_after_s(headers)
            ):
                continue
            cause = http_cause(message)
            return self._finish(
                t,
                self._crashed(
                    t.job, cause, f"HTTP {status} from {self.url}{path}: {message}", retries=t.retries
                ),
            )

    def _failed(self, t: Ticket, f: Failure) -> bool:
        """Handle a request that brought no HTTP answer: True when the ticket is settled, False to retry."""
        if t.result is not None:
            return True  # abandoned at its deadline by the waiting thread
        if f.kind == "timeout":
            self._finish(t, self._crashed(t.job, "timeout", self._timeout_message(), retries=t.retries))
            return True
        dead = self._dead(t) if f.kind in ("refused", "reset") else None
        if dead is not None and f.kind == "refused" and t.job.fault is None:
            return False  # it never reached the dead server: it goes to the restarted one
        if dead is not None:
            error = f"the llama.cpp server (pid {dead.pid}) died of {dead.death()} while answering; it is restarted"
            self._finish(t, self._crashed(t.job, dead.cause(), error, dead.log_tail(), t.retries))
            return True
        if self.server is None and f.kind == "refused":
            self._down = (
                f"the server at {self.url} stopped answering at {time.strftime('%H:%M:%S')} ({f.message})"
            )
            self._note(self._down)
            self._finish(t, self._crashed(t.job, SERVER_DIED, self._down, retries=t.retries))
            return True
        if f.kind in ("refused", "reset") and self._retry(t, f.message, None):
            return False
        cause = SERVER_DIED if self.server is None and f.kind in ("refused", "reset") else "exception"
        self._finish(
            t, self._crashed(t.job, cause, f"{self.url}: {self._scrub(f.message)}", retries=t.retries)
        )
        return True

    def _dead(self, t: Ticket) -> Incarnation | None:
        """The managed server process `t` went to, when it has died (its requests then break); if it is the
        current one, new requests wait until the waiting thread has restarted it."""
        dead = t.incarnation
        if dead is None:
            return None
        deadline = time.monotonic() + 2.0
        while dead.alive and time.monotonic() < deadline:
            time.sleep(0.05)  # a dying process closes its sockets before the kernel reaps it
        if dead.alive:
            return None
        with self._restart_lock:  # never clears the gate a restart has just opened
            if self.server is not None and self.server.current is dead:
                self._ready.clear()
        return dead

    def _retry(self, t: Ticket, why: str, after: float | None) -> bool:
        """Wait before retrying `t` (backoff, or the server's Retry-After); False when it has had its retries
        or the wait would pass its deadline."""
        attempt = len(t.retries)
        if attempt >= MAX_RETRIES or t.deadline is None:
            return False
        delay = after if after is not None else BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
        if time.monotonic() + delay >= t.deadline:
            return False
        t.retries.append(why)
        self._note(f"cell {t.job.cell_id}: retry {attempt + 1} in {delay:.1f} s after {why}")
        return not self._closing.wait(delay)

    def _inject(self, t: Ticket) -> bool:
        """A spec's fault for this cell: a real signal to a managed server (then the cell's request meets the
        dying server); any other fault cannot be raised in a remote server and is refused. True: settled."""
        fault = str(t.job.fault)
        if self.server is not None and fault in SIGNAL_FAULTS and self.server.pid is not None:
            self._note(
                f"injected fault {fault!r} for cell {t.job.cell_id}: {SIGNAL_FAULTS[fault].name} to the server"
            )
            os.kill(self.server.pid, SIGNAL_FAULTS[fault])
            return False
        error = (
            f"fault {fault!r} cannot be injected into backend openai: only segfault, abort and killed, into a "
            "server pov-runner starts; nothing was sent"
        )
        self._finish(t, self._crashed(t.job, "exception", error))
        return True

    # -- results -------------------------------------------------------------------------------------------
    def _finish(self, t: Ticket, result: JobResult) -> None:
        with self._cv:
            if t.result is None:
                t.result = result
            self._cv.notify_all()

    def _crashed(
        self, job: Job, cause: str, error: str, tail: str | None = None, retries: list[str] | None = None
    ) -> JobResult:
        if retries:
            error += f" (after {len(retries)} retries: {'; '.join(retries)})"
        now = time.time()
        return JobResult(
            job.cell_id,
            "crashed",
            cause=cause,
            error=self._scrub(error),
            stderr_tail=self._scrub(tail) if tail else None,
            metrics={"retries": float(len(retries or []))},
            started_at=now,
            ended_at=now,
        )

    def _scrub(self, text: str) -> str:
        """`text` without the API key, should a server ever echo it back."""
        return text.replace(self.key, f"[redacted {self.key_name}]") if self.key else text

    def _note(self, line: str) -> None:
        """A line in the worker log (next to the managed server's own), e.g. each retry."""
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self._log_lock, self.log_path.open("a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pov openai: {self._scrub(line)}\n")
        except OSError:
            pass  # a log that cannot be written costs the note, never the cell
