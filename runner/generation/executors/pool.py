"""Driving one model group through one worker: batching, crash isolation, restarts. Executor-neutral.

A batch that runs out of memory is split in halves and tried again, down to one cell
(runner.generation.stepdown); any other crashed batch is retried one job at a time, so only the jobs that
crash on their own are recorded as crashed; the others finish. Every generate call is recorded on its
cells. A worker that died is restarted (bounded by `limits.max_worker_restarts`); one whose model fails to
load takes its whole group down with it, since every job would fail the same way.
"""

from __future__ import annotations

import queue
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from runner.generation.jobs import MEMORY_CAUSES, NODE_LOST, Job, JobResult, LoadFailed, WorkerCrash
from runner.generation.stepdown import AttemptLog

if TYPE_CHECKING:
    from runner.spec import Generation, Limits, Model


class Worker(Protocol):
    """What the driver needs of a worker (a process, or a Ray actor handle)."""

    @property
    def alive(self) -> bool: ...

    def start(self) -> dict[str, float]:
        """Load the model; raise LoadFailed if it does not load."""
        ...

    def run_batch(
        self, jobs: list[Job], params: Generation, timeout_s: float, ahead: list[Job] | None = None
    ) -> list[JobResult]:
        """Answer a batch; raise WorkerCrash when it does not come back. `ahead` is the batch that will
        probably come next (runner.generation.prefetch encodes it meanwhile); a hint that changes no result."""
        ...


@dataclass
class RestartBudget:
    """Restarts left for a worker slot (`limits.max_worker_restarts`)."""

    limit: int
    used: int = 0


def make_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Cut batches from jobs sorted by prompt length, so each batch pads little; jobs of different seeds
    (repeats) go to different batches, each seed's in the order the first seed's ran."""
    by_seed: dict[int | None, list[Job]] = {}
    for job in jobs:
        by_seed.setdefault(job.seed, []).append(job)
    batches = []
    for group in by_seed.values():
        ordered = sorted(group, key=lambda j: len(j.prompt))
        batches += [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches


def batch_params(params: Generation, batch: list[Job]) -> Generation:
    """The decoding parameters of one batch: the spec's, with the batch's seed (a repeat's) when it has one."""
    seed = batch[0].seed if batch else None
    return params if seed is None or seed == params.seed else params.model_copy(update={"seed": seed})


def crashed_result(
    job: Job,
    crash: WorkerCrash,
    attempts: int,
    batch_size: int,
    error: str | None = None,
    tried: list[dict[str, Any]] | None = None,
) -> JobResult:
    tried = tried or []
    return JobResult(
        job.cell_id,
        "crashed",
        cause=crash.cause,
        error=error or crash.error,
        stderr_tail=crash.stderr_tail or None,
        metrics={
            "attempts": float(attempts),
            "batch_size": float(batch_size),
            "memory_retries": float(sum(a.get("outcome") in MEMORY_CAUSES for a in tried)),
        },
        attempts=tried,
    )


def run_group(
    worker: Worker,
    jobs: list[Job],
    params: Generation,
    limits: Limits,
    emit: Callable[[list[JobResult]], None],
    budget: RestartBudget,
    should_stop: Callable[[], bool] = lambda: False,
    node_retries: int = 0,
) -> None:
    """Run every job of one model group on `worker`, emitting results batch by batch.

    A batch whose worker's node died under it (`node_lost`, Ray) is not the batch's fault: it runs again,
    whole and first in line, on a new worker (not charged to the restart budget), up to `node_retries`
    times; then its cells are recorded crashed with that cause."""
    size = 1 if params.batch_invariant else params.batch_size
    pending: deque[tuple[list[Job], int]] = deque((b, 1) for b in make_batches(jobs, size))
    log = AttemptLog(limits)
    last_crash: WorkerCrash | None = None
    started: dict[str, float] = {}
    node_losses: dict[tuple[str, ...], int] = {}

    def crashed(job: Job, crash: WorkerCrash, attempt: int, size: int, note: str | None = None) -> JobResult:
        return crashed_result(job, crash, attempt, size, note, log.take(job.cell_id))

    while pending and not should_stop():
        if not worker.alive:
            if last_crash is not None:
                if budget.used >= budget.limit:
                    note = (
                        f"not run: the worker crashed and was restarted {budget.used} times "
                        f"(limits.max_worker_restarts); last crash: {last_crash.error}"
                    )
                    emit([crashed(j, last_crash, 0, 0, note) for batch, _ in pending for j in batch])
                    return
                budget.used += 1
            try:
                started = worker.start()
            except LoadFailed as failed:
                note = f"model failed to load: {failed.error}"
                emit([crashed(j, failed, a, 0, note) for batch, a in pending for j in batch])
                return
        batch, attempt = pending.popleft()
        ahead = pending[0][0] if pending else None
        these = batch_params(params, batch)
        try:
            results = worker.run_batch(batch, these, limits.cell_timeout_s * len(batch), ahead)
        except WorkerCrash as crash:
            if should_stop():
                return  # the run is stopping and killed the worker: its jobs stay pending
            if crash.cause == NODE_LOST:
                lost = tuple(j.cell_id for j in batch)
                node_losses[lost] = node_losses.get(lost, 0) + 1
                if node_losses[lost] <= node_retries:
                    pending.appendleft((batch, attempt + 1))
                else:
                    note = f"{crash.error} (its node died {node_losses[lost]} times; executor.node_retries)"
                    emit([crashed(j, crash, attempt, len(batch), note) for j in batch])
                continue
            if not crash.worker_alive:
                last_crash = crash
            log.failed(batch, crash, these)
            smaller = log.step_down(batch, crash)
            if smaller is not None:
                # Out of memory: the halves go first in line, each split again if it fails the same way.
                pending.extendleft((half, attempt + 1) for half in reversed(smaller))
            elif log.out_of_retries(batch, crash):
                note = (
                    f"{crash.error} (a batch of {len(batch)}; not retried smaller: the group used "
                    f"limits.max_memory_retries = {limits.max_memory_retries})"
                )
                emit([crashed(j, crash, attempt, len(batch), note) for j in batch])
            elif len(batch) > 1:
                # Isolate: each job alone, first in line, so the crash is pinned on the jobs that cause it.
                pending.extendleft(([j], attempt + 1) for j in reversed(batch))
            else:
                emit([crashed(batch[0], crash, attempt, 1)])
            continue
        log.fitted(batch, results, these)
        for r in results:
            r.metrics["attempts"] = float(attempt)
            for key in ("worker_start_s", "worker_boot_s"):
                if key in started:
                    r.metrics[key] = started[key]
        emit(results)


def worker_identity(model: Model, limits: Limits) -> str:
    """What makes a loaded worker reusable for a group: the same model settings and the same memory cap."""
    import json

    return json.dumps([model.model_dump(mode="json"), limits.gpu_memory_gb], sort_keys=True)


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


class SlotPool:
    """Worker slots in threads, taking model groups from one list; results reach `on_result` in the caller's
    thread only, so the tracker and the progress bar never see two threads. Shared by the local and Ray
    executors (which differ only in how a slot makes its worker) and by `pov serve`.

    A slot holds its worker between groups only when it can serve the next one (same identity); it prefers
    the group its worker already loaded. With `keep_workers` the last worker of each slot stays loaded after
    `run` returns, for the next run (`pov serve`); `prestart` begins loading workers before `run` is called."""

    def __init__(self, limits: Limits, node_retries: int = 0) -> None:
        self.limits = limits
        self.node_retries = node_retries
        self.workers: list[Any] = []
        self.restarts = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.held: dict[int, tuple[str, Any]] = {}
        """Per slot: the identity and handle of the worker it holds (loaded, loading, or kept warm)."""

    def prestart(
        self, models: list[tuple[str, Model]], n_slots: int, make_worker: Callable[[int, str, Model], Any]
    ) -> None:
        """Begin loading the first models (one per free slot) now, so that imports and the model load
        overlap with the run's own preparation (manifest, ingest, retrieval, prompts)."""
        wanted = {worker_identity(m, self.limits) for _, m in models}
        for index, (ident, _) in list(self.held.items()):
            if ident not in wanted:  # kept warm for a model this run does not use: free its device
                self._drop(index)
        free = [i for i in range(n_slots) if i not in self.held]
        loaded = {ident for ident, _ in self.held.values()}
        todo = [(k, m) for k, m in models if worker_identity(m, self.limits) not in loaded]
        for index, (key, model) in zip(free, todo, strict=False):
            worker = make_worker(index, safe_name(key), model)
            begin = getattr(worker, "begin", None)
            if begin is not None:
                begin()
            self._hold(index, worker_identity(model, self.limits), worker)

    def _hold(self, index: int, ident: str, worker: Any) -> None:
        with self._lock:
            self.held[index] = (ident, worker)
            if worker not in self.workers:
                self.workers.append(worker)

    def _drop(self, index: int) -> None:
        with self._lock:
            held = self.held.pop(index, None)
        if held is not None:
            held[1].stop()
            with self._lock:
                if held[1] in self.workers:
                    self.workers.remove(held[1])

    def run(
        self,
        groups: dict[str, tuple[Model, list[Job]]],
        n_slots: int,
        make_worker: Callable[[int, str, Model], Any],
        params: Generation,
        on_result: Callable[[list[JobResult]], None],
        *,
        keep_workers: bool = False,
    ) -> None:
        from runner.generation.jobs import Stopped

        work = [(key, model, jobs) for key, (model, jobs) in groups.items() if jobs]
        # A slot that ends puts an empty list, so the loop below notices at once, not at its next timeout.
        results: queue.Queue[list[JobResult]] = queue.Queue()
        errors: list[BaseException] = []
        self.stop.clear()

        def take(index: int) -> tuple[str, Model, list[Job]] | None:
            with self._lock:
                if not work:
                    return None
                mine = self.held.get(index, ("", None))[0]
                others = {ident for i, (ident, _) in self.held.items() if i != index}
                idents = [worker_identity(m, self.limits) for _, m, _ in work]
                # Own model first; then one no other slot holds loaded; else the first waiting.
                pick = next((i for i, ident in enumerate(idents) if ident == mine), None)
                if pick is None:
                    pick = next((i for i, ident in enumerate(idents) if ident not in others), 0)
                return work.pop(pick)

        def slot_main(index: int) -> None:
            try:
                slot_loop(index)
            finally:
                results.put([])

        def slot_loop(index: int) -> None:
            budget = RestartBudget(self.limits.max_worker_restarts)
            while not self.stop.is_set():
                item = take(index)
                if item is None:
                    return
                key, model, jobs = item
                ident = worker_identity(model, self.limits)
                held = self.held.get(index)
                if held is not None and held[0] == ident:
                    worker = held[1]
                    worker.limits = self.limits  # the same cap; this run's timeouts
                else:
                    self._drop(index)  # free the device for the next model
                    worker = make_worker(index, safe_name(key), model)
                    self._hold(index, ident, worker)
                used = budget.used
                try:
                    run_group(
                        worker,
                        jobs,
                        params,
                        self.limits,
                        results.put,
                        budget,
                        self.stop.is_set,
                        self.node_retries,
                    )
                except Stopped:
                    return
                except BaseException as e:  # a bug here must not hang the run: hand it to the caller
                    errors.append(e)
                    self.stop.set()
                    return
                finally:
                    with self._lock:
                        self.restarts += budget.used - used
                    if not (keep_workers and worker.alive):
                        self._drop(index)

        threads = [
            threading.Thread(target=slot_main, args=(i,), name=f"pov-slot-{i}", daemon=True)
            for i in range(n_slots)
        ]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads) or not results.empty():
                try:
                    batch = results.get(timeout=0.1)
                except queue.Empty:
                    continue
                if batch:
                    on_result(batch)
        except BaseException:
            self.shutdown()
            raise
        finally:
            for t in threads:
                t.join(timeout=30)
            if not keep_workers:
                for index in list(self.held):  # prestarted for a group that turned out to have no work
                    self._drop(index)
        if errors:
            raise errors[0]

    def shutdown(self) -> None:
        """Stop every worker now (Ctrl-C, or an error in the caller)."""
        self.stop.set()
        with self._lock:
            self.held.clear()
        for worker in list(self.workers):
            worker.terminate()


class PooledExecutor:
    """What the local and Ray executors share: their workers, restart count and shutdown live in a SlotPool.
    `pov serve` drives a local executor through these methods alone."""

    _pool: SlotPool
    limits: Limits

    @property
    def workers(self) -> list[Any]:
        return self._pool.workers

    @property
    def restarts(self) -> int:
        return self._pool.restarts

    def held(self) -> list[tuple[int, Any]]:
        """(slot index, worker) for each slot that holds a worker (loaded, loading, or kept warm)."""
        with self._pool._lock:
            return sorted(((i, worker) for i, (_, worker) in self._pool.held.items()), key=lambda x: x[0])

    def set_limits(self, limits: Limits) -> None:
        """Use these limits from the next batch on (a server's next run may bring other timeouts)."""
        self.limits = self._pool.limits = limits

    def request_stop(self) -> None:
        """Ask the run in progress to stop: no new batch starts; the one in flight is abandoned."""
        self._pool.stop.set()

    def shutdown(self) -> None:
        """Stop every worker now (Ctrl-C, or an error in the caller)."""
        self._pool.shutdown()
