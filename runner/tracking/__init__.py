"""The tracking stage: executions and cells recorded in MLflow, and run again from what was recorded.

One parent run per execution of `pov run`, one child run per cell; the names of every tag, param, metric
and artifact are in `runner.tracking.schema` (with its version). MLflow itself is imported only when a run
is tracked, so `pov --help` does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.run import NullTracker, Tracker
from runner.tracking.audit import AuditOutcome, audit
from runner.tracking.client import find_run, make_client, quote, resolve_tracking_uri, search_all, tag_is
from runner.tracking.files import read_execution_files, read_run_files
from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.reproduce import RerunOutcome, rerun
from runner.tracking.run_ids import LIST_HINT, resolve_run_id
from runner.tracking.schema import (
    CHECK_FAIL,
    CHECK_PASS,
    SCHEMA_VERSION,
    TRUE,
    Artifacts,
    Kind,
    Metrics,
    Params,
    State,
    Status,
    Tags,
    Traces,
)

if TYPE_CHECKING:
    from runner.spec import Experiment

__all__ = [
    "CHECK_FAIL",
    "CHECK_PASS",
    "LIST_HINT",
    "SCHEMA_VERSION",
    "TRUE",
    "Artifacts",
    "AuditOutcome",
    "Kind",
    "Metrics",
    "MlflowTracker",
    "NullTracker",
    "Params",
    "RerunOutcome",
    "State",
    "Status",
    "Tags",
    "Traces",
    "Tracker",
    "audit",
    "find_run",
    "make_client",
    "make_tracker",
    "quote",
    "read_execution_files",
    "read_run_files",
    "rerun",
    "resolve_run_id",
    "resolve_tracking_uri",
    "search_all",
    "tag_is",
]


def make_tracker(exp: Experiment, no_track: bool) -> Tracker:
    """The tracker `pov run` uses: MLflow, or one that records nothing for `--no-track`."""
    if no_track:
        return NullTracker()
    return MlflowTracker(
        resolve_tracking_uri(exp.spec.tracking.uri), exp.spec.tracking.experiment or exp.spec.name
    )
