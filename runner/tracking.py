"""Trackers record executions and cells. The runner's parent process is their only writer.

The MLflow one lives in runner/mlflow_tracker.py (imported only when a run is tracked, so `pov --help` does
not load MLflow); its schema is in CONTRACTS.md.
"""

from __future__ import annotations

import os
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


def resolve_tracking_uri(exp: Experiment | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the spec's `tracking.uri`, else MLflow's own default
    (`sqlite:///mlflow.db` in the working directory, so `mlflow ui` there shows the runs)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if exp is not None and exp.spec.tracking.uri:
        return exp.spec.tracking.uri
    import mlflow

    return str(mlflow.get_tracking_uri())


def make_tracker(exp: Experiment, no_track: bool) -> Tracker:
    """The tracker `pov run` uses: MLflow, or one that records nothing for `--no-track`."""
    if no_track:
        return NullTracker()
    from runner.mlflow_tracker import MlflowTracker

    return MlflowTracker(resolve_tracking_uri(exp), exp.spec.tracking.experiment or exp.spec.name)
