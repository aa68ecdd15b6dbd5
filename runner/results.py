"""What a cell produces, and the causes a cell can crash with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from runner.matrix import Cell

Status = Literal["finished", "crashed"]
CAUSES = ("cuda_oom", "exception", "segfault", "abort", "killed", "timeout")
"""Why a cell crashed: CUDA out of memory; any other exception; SIGSEGV; SIGABRT; SIGKILL (e.g. the host's
OOM killer); ran past `limits.cell_timeout_s`."""


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
    """latency_s, prompt_tokens, new_tokens, tokens_per_s, gpu_peak_allocated_mb, gpu_peak_reserved_mb,
    host_rss_mb, batch_size, attempts; plus check_* and complexity_* values."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra string facts (check flags, device)."""
    started_at: float = 0.0
    ended_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cell"] = {"id": self.cell.id, **self.cell.axes()}
        return d
