"""Out of memory without losing the run's shape: every generate call is an `Attempt`, recorded on each of its
cells, and a batch that runs out of memory is split in halves and tried again, down to one cell.

A batch crashing with a memory cause (`cuda_oom`, or `killed`: the host's OOM killer) may fit when smaller,
so only a cell that runs out of memory alone is recorded `cuda_oom`; the attempts say where the edge was
(batch size x padded prompt tokens, peak memory, the cap), which runner.generation.frontier reads back. Any
other crash is isolated one cell at a time, as before (runner.generation.executors.pool). Retries are
bounded per model group by `limits.max_memory_retries`, so a run cannot spin.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from runner.generation.jobs import MEMORY_CAUSES

if TYPE_CHECKING:
    from runner.generation.jobs import Job, JobResult, WorkerCrash
    from runner.spec import Generation, Limits

FITTED = "fitted"
"""The outcome of an attempt that came back with answers; any other outcome is a crash cause."""


@dataclass
class Attempt:
    """One generate call of one batch, as its cells record it."""

    id: str
    size: int
    padded_prompt_tokens: int | None
    """The batch's prompt length in tokens (every row is padded to its longest); None when the worker died
    before it could say."""
    max_new_tokens: int
    new_tokens: int | None
    """The longest answer generated, in tokens (None unless the batch fitted)."""
    outcome: str
    """`fitted`, or the crash cause."""
    gpu_peak_mb: float | None
    """Peak GPU memory allocated during the call, MiB (None on the CPU, or when the worker died)."""
    host_rss_mb: float | None
    """The worker process's peak resident memory so far, MiB."""
    cap: str
    """The memory limit the batch ran under: `memory_cap`."""
    cells: list[str] = field(default_factory=list)

    @property
    def batch_tokens(self) -> int | None:
        """Prompt tokens of the whole batch: size x padded prompt tokens."""
        return None if self.padded_prompt_tokens is None else self.size * self.padded_prompt_tokens

    @property
    def out_of_memory(self) -> bool:
        return self.outcome in MEMORY_CAUSES

    def to_dict(self) -> dict[str, Any]:
        """What each cell stores of it (without the other cells' ids, which `composition` carries)."""
        out = asdict(self)
        del out["cells"]
        out["batch_tokens"] = self.batch_tokens
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        """An attempt as `to_dict` stored it (or `composition` plus what a cell stored)."""

        def whole(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            str(data.get("id") or data.get("attempt") or ""),
            int(data.get("size") or 0),
            whole("padded_prompt_tokens"),
            int(data.get("max_new_tokens") or 0),
            whole("new_tokens"),
            str(data.get("outcome") or ""),
            number("gpu_peak_mb"),
            number("host_rss_mb"),
            str(data.get("cap") or ""),
            [str(c) for c in data.get("cells") or []],
        )

    def composition(self) -> dict[str, Any]:
        """The batch as its cells record it: attempt id, size, padded prompt tokens, and the cells' ids."""
        return {
            "attempt": self.id,
            "size": self.size,
            "padded_prompt_tokens": self.padded_prompt_tokens,
            "batch_tokens": self.batch_tokens,
            "cells": list(self.cells),
        }


def memory_cap(limits: Limits, jobs: list[Job]) -> str:
    """The memory limit a batch runs under, as a label the frontier groups by: an injected threshold
    (testing), `limits.gpu_memory_gb`, or none."""
    injected = [j.fault_above_tokens for j in jobs if j.fault and j.fault_above_tokens is not None]
    if injected:
        return f"injected: {min(injected)} batch tokens"
    if limits.gpu_memory_gb:
        return f"{limits.gpu_memory_gb:g} GiB"
    return "uncapped"


def halves(batch: list[Job]) -> list[list[Job]]:
    """A batch cut in two, shorter prompts first (batches are sorted by prompt length)."""
    cut = (len(batch) + 1) // 2
    return [batch[:cut], batch[cut:]]


def _number(metrics: dict[str, float], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


class AttemptLog:
    """The attempts of one model group: made as batches come back, handed to each cell's result, and the
    group's budget of smaller batches tried after running out of memory."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.retries_left = limits.max_memory_retries
        self._by_cell: dict[str, list[dict[str, Any]]] = {}

    def _add(self, attempt: Attempt) -> Attempt:
        for cid in attempt.cells:
            self._by_cell.setdefault(cid, []).append(attempt.to_dict())
        return attempt

    def failed(self, batch: list[Job], crash: WorkerCrash, params: Generation) -> Attempt:
        m = crash.measured
        width = m.get("padded_prompt_tokens")
        gpu = m.get("gpu_peak_allocated_mb")
        return self._add(
            Attempt(
                uuid.uuid4().hex[:12],
                len(batch),
                None if width is None else int(width),
                params.max_new_tokens,
                None,
                crash.cause,
                gpu if gpu else None,
                _number(m, "host_rss_mb"),
                memory_cap(self.limits, batch),
                [j.cell_id for j in batch],
            )
        )

    def fitted(self, batch: list[Job], results: list[JobResult], params: Generation) -> None:
        """Record the batch on every result: the attempts its cell took part in, and its composition."""
        first = results[0].metrics if results else {}
        width = first.get("padded_prompt_tokens")
        if width is None:  # a worker that does not measure it: its cells' own prompt lengths tell
            width = max((r.metrics.get("prompt_tokens", 0.0) for r in results), default=0.0)
        gpu = first.get("gpu_peak_allocated_mb")
        attempt = self._add(
            Attempt(
                uuid.uuid4().hex[:12],
                len(batch),
                int(width),
                params.max_new_tokens,
                int(max((r.metrics.get("new_tokens", 0.0) for r in results), default=0.0)),
                FITTED,
                gpu if gpu else None,
                _number(first, "host_rss_mb"),
                memory_cap(self.limits, batch),
                [j.cell_id for j in batch],
            )
        )
        for r in results:
            r.attempts = self.take(r.cell_id)
            r.batch = {**r.batch, **attempt.composition()}  # beside what the worker said of it (its node)
            r.metrics["padded_prompt_tokens"] = float(width)
            r.metrics["batch_tokens"] = float(attempt.batch_tokens or 0)
            r.metrics["memory_retries"] = float(sum(a["outcome"] in MEMORY_CAUSES for a in r.attempts))

    def take(self, cell_id: str) -> list[dict[str, Any]]:
        """The attempts a cell took part in (forgotten here: its result carries them)."""
        return self._by_cell.pop(cell_id, [])

    def step_down(self, batch: list[Job], crash: WorkerCrash) -> list[list[Job]] | None:
        """The smaller batches to try after `batch` crashed: its halves after running out of memory (while
        the group's retries last), else None (the caller isolates or records the cells)."""
        if crash.cause not in MEMORY_CAUSES or len(batch) < 2:
            return None
        if self.retries_left < 2:
            return None
        self.retries_left -= 2
        return halves(batch)

    def out_of_retries(self, batch: list[Job], crash: WorkerCrash) -> bool:
        """True when `batch` ran out of memory and would have been split but the budget is spent."""
        return crash.cause in MEMORY_CAUSES and len(batch) > 1 and self.retries_left < 2
