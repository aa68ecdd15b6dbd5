"""What the parent and a worker exchange: jobs in, results out, and why a job did not come back.

Crash causes (`CAUSES`): an exception in the worker is `cuda_oom` or `exception`; a death by signal is
`segfault` (SIGSEGV), `abort` (SIGABRT) or `killed` (SIGKILL: the host's OOM killer); a batch that runs
past its deadline is `timeout` and its worker is killed; a Ray actor whose node died under it (raylet or host
lost) is `node_lost`, recorded only once the batch has been run again `executor.node_retries` times.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

CAUSES = ("cuda_oom", "exception", "segfault", "abort", "killed", "timeout", "node_lost")
"""Why a cell crashed: CUDA out of memory; any other exception; SIGSEGV; SIGABRT; SIGKILL (e.g. the host's
OOM killer); ran past `limits.cell_timeout_s`; its Ray node died every time it ran."""
NODE_LOST = "node_lost"
MEMORY_CAUSES = ("cuda_oom", "killed")
"""Causes that a smaller batch may not meet: a batch that crashes with one is split in halves and retried."""


@dataclass
class Job:
    cell_id: str
    prompt: str
    fault: str | None = None
    """A crash cause to inject for real before generating the batch that holds this job (testing only)."""
    fault_above_tokens: int | None = None
    """Inject `fault` only when the batch's prompt tokens (size x padded length) are more than this."""
    seed: int | None = None
    """The seed of the batch that holds this job (`generation.seed` when None); batches never mix seeds."""


@dataclass
class JobResult:
    cell_id: str
    status: str
    """`finished` or `crashed`."""
    cause: str | None = None
    error: str | None = None
    stderr_tail: str | None = None
    output: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float = 0.0
    batch: dict[str, Any] = field(default_factory=dict)
    """The batch that produced this result (runner.generation.stepdown.Attempt.composition): its attempt
    id, size, padded prompt tokens and the ids of its cells."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Every generate call this job took part in, in order (runner.generation.stepdown.Attempt.to_dict)."""


class WorkerCrash(Exception):
    """A batch (or the model load) did not come back: why, and the tail of the worker's stderr. `measured`
    holds what the worker knew of the batch before it failed (`padded_prompt_tokens`, peak memory)."""

    def __init__(
        self,
        cause: str,
        error: str,
        stderr_tail: str,
        *,
        worker_alive: bool,
        measured: dict[str, float] | None = None,
    ) -> None:
        super().__init__(f"{cause}: {error}")
        self.cause, self.error, self.stderr_tail, self.worker_alive = cause, error, stderr_tail, worker_alive
        self.measured: dict[str, float] = dict(measured or {})


class LoadFailed(WorkerCrash):
    """The model did not load; every job of its group would fail the same way."""


class Stopped(Exception):
    """The run is being stopped (Ctrl-C); the worker was killed."""


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(`cuda_oom` or `exception`, "Type: message"). Looks at class names so that torch need not be imported."""
    text = f"{type(exc).__name__}: {exc}"
    is_oom = any(
        c.__name__ == "OutOfMemoryError" and c.__module__.startswith("torch") for c in type(exc).__mro__
    )
    if is_oom or (isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)):
        return "cuda_oom", text
    return "exception", text


def classify_exit(exitcode: int | None) -> tuple[str, str]:
    """The cause of a worker process's death from its exit code (-N: killed by signal N)."""
    if exitcode is None:
        return "killed", "worker stopped answering and did not exit"
    if exitcode < 0:
        sig = -exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig in (signal.SIGSEGV, signal.SIGBUS):
            return "segfault", f"worker died of {name} (segmentation fault)"
        if sig == signal.SIGABRT:
            return "abort", f"worker died of {name} (abort, e.g. a failed assertion in native code)"
        if sig == signal.SIGKILL:
            return "killed", f"worker died of {name} (the host's out-of-memory killer, or another process)"
        return "killed", f"worker died of {name}"
    return "exception", f"worker exited with status {exitcode} without reporting an error"


if TYPE_CHECKING:
    from runner.spec import Model

Groups = dict[str, "tuple[Model, list[Job]]"]
"""A run's work for an executor: model key -> (the model, its jobs)."""
