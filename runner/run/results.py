"""What a cell produces: its output or its crash (`runner.generation.CAUSES`), with prompt, context and
metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from runner.spec import Cell

Status = Literal["finished", "crashed"]


@dataclass
class CellResult:
    """One cell's outcome; the runner's parent process alone builds these and hands them to the tracker."""

    cell: Cell
    status: Status
    prompt: str
    context: dict[str, Any]
    """The three ranked retrieval stages (ids, texts, scores per stage), as RetrievalResult.to_dict()."""
    output: str | None = None
    cause: str | None = None
    error: str | None = None
    """Exception type and message, or the signal, for a crash."""
    stderr_tail: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    """latency_s (the cell's own time in its batch when latency_per_cell is 1, else the batch's),
    batch_latency_s, batch_tokens_per_s, latency_per_cell, prompt_tokens, new_tokens, tokens_per_s,
    gpu_peak_allocated_mb, gpu_peak_reserved_mb, host_rss_mb, batch_size, padded_prompt_tokens,
    batch_tokens, memory_retries, attempts; plus check_* and complexity_* values."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra string facts (check flags, device)."""
    started_at: float = 0.0
    ended_at: float = 0.0
    batch: dict[str, Any] = field(default_factory=dict)
    """The batch the cell's answer came from: attempt id, size, padded prompt tokens, batch tokens, and the
    ids of the cells it shared the batch with (`cells`); empty for a cell that never fitted."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Every generate call the cell took part in, in order (runner.generation.Attempt.to_dict): a batch
    that ran out of memory, its halves, ..., the one that fitted."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cell"] = {"id": self.cell.id, **self.cell.axes()}
        return d
