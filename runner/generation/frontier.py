"""The memory frontier: from recorded attempts (runner.generation.stepdown.Attempt), per model and memory
cap, the largest batch that fitted and the smallest that ran out of memory, measured in batch prompt tokens
(batch size x padded prompt tokens), the quantity that a batch's activation memory grows with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runner.generation.stepdown import FITTED, Attempt


@dataclass
class Edge:
    """Where one model stops fitting under one memory cap."""

    model: str
    cap: str
    fitted: Attempt | None
    """The attempt with the most batch tokens that fitted (ties: the larger batch)."""
    failed: Attempt | None
    """The attempt with the fewest batch tokens that ran out of memory (ties: the smaller batch)."""
    attempts: int
    """Attempts with a known size and padded length under this model and cap."""

    @property
    def bracketed(self) -> bool:
        """True when the edge lies between the two: everything that fitted was smaller than the smallest
        failure (false when the same size once fitted and once failed: memory that others used, say)."""
        if self.fitted is None or self.failed is None:
            return False
        return (self.fitted.batch_tokens or 0) < (self.failed.batch_tokens or 0)


def frontier(attempts: Iterable[tuple[str, Attempt]]) -> list[Edge]:
    """One Edge per (model, cap), from (model, attempt) pairs; each attempt counted once (by id), and only
    fitted and out-of-memory ones with a known padded length."""
    seen: set[str] = set()
    groups: dict[tuple[str, str], list[Attempt]] = {}
    for model, a in attempts:
        if a.id in seen or a.batch_tokens is None or not (a.outcome == FITTED or a.out_of_memory):
            continue
        seen.add(a.id)
        groups.setdefault((model, a.cap), []).append(a)
    edges = []
    for (model, cap), group in sorted(groups.items()):
        fitted = [a for a in group if a.outcome == FITTED]
        failed = [a for a in group if a.out_of_memory]
        edges.append(
            Edge(
                model,
                cap,
                max(fitted, key=lambda a: (a.batch_tokens or 0, a.size), default=None),
                min(failed, key=lambda a: (a.batch_tokens or 0, a.size), default=None),
                len(group),
            )
        )
    return edges
