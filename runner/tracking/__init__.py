"""The tracking stage: executions and cells recorded in MLflow, and run again from what was recorded.

One parent run per execution of `pov run`, one child run per cell; the names of every tag, param, metric
and artifact are in `runner.tracking.schema` (with its version). MLflow itself is imported only when a run
is tracked, so `pov --help` does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.run import NullTracker, Tracker
from runner.tracking.client import make_client, resolve_tracking_uri, search_all
from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.rerun import RerunOutcome, rerun

if TYPE_CHECKING:
    from runner.spec import Experiment

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "RerunOutcome",
    "Tracker",
    "make_client",
    "make_tracker",
    "rerun",
    "resolve_tracking_uri",
    "search_all",
]


def make_tracker(exp: Experiment, no_track: bool) -> Tracker:
    """The tracker `pov run` uses: MLflow, or one that records nothing for `--no-track`."""
    if no_track:
        return NullTracker()
    return MlflowTracker(
        resolve_tracking_uri(exp.spec.tracking.uri), exp.spec.tracking.experiment or exp.spec.name
    )
