"""What the engine needs of a tracker. The MLflow one is runner.tracking.MlflowTracker; `--no-track` uses
`NullTracker`. The runner's parent process is a tracker's only writer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runner.run.results import CellResult
    from runner.spec import Cell, Experiment


class Tracker(Protocol):
    run_id: str | None
    """The execution's id once `start` has opened it (None: the tracker records nothing, and the run
    folder gets an id of its own)."""

    def check(self) -> None:
        """Raise a UserError now if the store cannot be reached: before anything else of the run is done."""
        ...

    def start(
        self,
        exp: Experiment,
        cells: list[Cell],
        manifest: dict[str, Any],
        *,
        fresh: bool = False,
        retry_crashed: bool = False,
    ) -> set[str]:
        """Open a new execution or resume the latest unfinished one; return the ids of cells to skip."""
        ...

    def log(self, results: list[CellResult]) -> None:
        """Record finished and crashed cells (called in batches)."""
        ...

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the execution with its summary metrics."""
        ...


class NullTracker:
    """Records nothing (`--no-track`); the run folder's results.jsonl is still written."""

    run_id: str | None = None

    def check(self) -> None:
        return None

    def start(
        self,
        exp: Experiment,
        cells: list[Cell],
        manifest: dict[str, Any],
        *,
        fresh: bool = False,
        retry_crashed: bool = False,
    ) -> set[str]:
        return set()

    def log(self, results: list[CellResult]) -> None:
        return None

    def finish(self, summary: dict[str, Any]) -> None:
        return None
