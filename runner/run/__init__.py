"""The run stage: an experiment's cells are retrieved, rendered, generated and recorded, each exactly once.

    summary = run_experiment(exp, expand(exp), tracker)

`run_experiment` writes every cell's result to the run folder's results.jsonl and to a `Tracker`; a
`manifest` records what outside the spec could change the results, and `compare` names what changed.
"""

from runner.run.checks import CHECK_FAIL, CHECK_PASS, CHECK_TAG_PREFIX
from runner.run.drift import Drift, compare
from runner.run.engine import run_experiment
from runner.run.environment import TAGGED_PACKAGES
from runner.run.manifest import build_manifest
from runner.run.prepare import stage_metrics
from runner.run.results import CellResult
from runner.run.sinks import JsonlSink, read_results, run_dir
from runner.run.summary import RunSummary
from runner.run.tracker import NullTracker, Tracker

__all__ = [
    "CHECK_FAIL",
    "CHECK_PASS",
    "CHECK_TAG_PREFIX",
    "TAGGED_PACKAGES",
    "CellResult",
    "Drift",
    "JsonlSink",
    "NullTracker",
    "RunSummary",
    "Tracker",
    "build_manifest",
    "compare",
    "read_results",
    "run_dir",
    "run_experiment",
    "stage_metrics",
]
