"""Driving one model group through one worker: batching, crash isolation, restarts. Executor-neutral.

A crashed batch is retried one job at a time, so only the jobs that crash on their own are recorded as
crashed; the others finish. A worker that died is restarted (bounded by `limits.max_worker_restarts`);
one whose model fails to load takes its whole group down with it, since every job would fail the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runner.workers import Job, JobResult, LoadFailed, WorkerCrash

if TYPE_CHECKING:
    from runner.spec import Generation, Limits


class Worker(Protocol):
    """What the driver needs of a worker (a process, or a Ray actor handle)."""

    @property
    def alive(self) -> bool: ...

    def start(self) -> dict[str, float]:
        """Load the model; raise LoadFailed if it does not load."""
        ...

    def run_batch(self, jobs: list[Job], params: Generation, timeout_s: float) -> list[JobResult]:
        """Answer a batch; raise WorkerCrash when it does not come back."""
        ...


@dataclass
class RestartBudget:
    """Restarts left for a worker slot (`limits.max_worker_restarts`)."""

    limit: int
    used: int = 0


def make_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Cut batches from jobs sorted by prompt length, so each batch pads little."""
    ordered = sorted(jobs, key=lambda j: len(j.prompt))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def crashed_result(
    job: Job, crash: WorkerCrash, attempts: int, batch_size: int, error: str | None = None
) -> JobResult:
    return JobResult(
        job.cell_id,
        "crashed",
        cause=crash.cause,
        error=error or crash.error,
        stderr_tail=crash.stderr_tail or None,
        metrics={"attempts": float(attempts), "batch_size": float(batch_size)},
    )


def run_group(
    worker: Worker,
    jobs: list[Job],
    params: Generation,
    limits: Limits,
    emit: Callable[[list[JobResult]], None],
    budget: RestartBudget,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run every job of one model group on `worker`, emitting results batch by batch."""
    pending: deque[tuple[list[Job], int]] = deque((b, 1) for b in make_batches(jobs, params.batch_size))
    last_crash: WorkerCrash | None = None
    while pending and not should_stop():
        if not worker.alive:
            if last_crash is not None:
                if budget.used >= budget.limit:
                    note = (
                        f"not run: the worker crashed and was restarted {budget.used} times "
                        f"(limits.max_worker_restarts); last crash: {last_crash.error}"
                    )
                    emit([crashed_result(j, last_crash, 0, 0, note) for batch, _ in pending for j in batch])
                    return
                budget.used += 1
            try:
                worker.start()
            except LoadFailed as failed:
                note = f"model failed to load: {failed.error}"
                emit([crashed_result(j, failed, a, 0, note) for batch, a in pending for j in batch])
                return
        batch, attempt = pending.popleft()
        try:
            results = worker.run_batch(batch, params, limits.cell_timeout_s * len(batch))
        except WorkerCrash as crash:
            if should_stop():
                return  # the run is stopping and killed the worker: its jobs stay pending
            if not crash.worker_alive:
                last_crash = crash
            if len(batch) > 1:
                # Isolate: each job alone, first in line, so the crash is pinned on the jobs that cause it.
                pending.extendleft(([j], attempt + 1) for j in reversed(batch))
            else:
                emit([crashed_result(batch[0], crash, attempt, 1)])
            continue
        for r in results:
            r.metrics["attempts"] = float(attempt)
        emit(results)
