"""Trackers record executions and cells. The runner's parent process is their only writer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runner.loader import Experiment
    from runner.matrix import Cell
    from runner.results import CellResult


class Tracker(Protocol):
    def start(self, exp: Experiment, cells: list[Cell], manifest: dict[str, Any], *, fresh: bool = False,
              retry_crashed: bool = False) -> set[str]:
        """Open a new execution or resume the latest unfinished one; return the ids of cells to skip."""
        ...

    def log(self, results: list[CellResult]) -> None:
        """Record finished and crashed cells (called in batches)."""
        ...

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the execution with its summary metrics."""
        ...


class NullTracker:
    """Records nothing (`--no-track`); same methods as the real one."""

    run_id: str | None = None

    def start(self, exp: Experiment, cells: list[Cell], manifest: dict[str, Any], *, fresh: bool = False,
              retry_crashed: bool = False) -> set[str]:
        return set()

    def log(self, results: list[CellResult]) -> None:
        return None

    def finish(self, summary: dict[str, Any]) -> None:
        return None
