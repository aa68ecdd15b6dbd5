"""The run stage: an experiment's cells are retrieved, rendered, generated and recorded, each exactly once.

    summary = run_experiment(exp, expand(exp), tracker)

`run_experiment` writes every cell's result to the run folder's results.jsonl and to a `Tracker`; a
`manifest` records what outside the spec could change the results, and `compare` names what changed.
`execution_lock` keeps a second process off an execution that one is running.

The names are resolved on first use, so that `pov run` can take the execution's lock (runner.run.lock) and
refuse a second run of a spec before the engine's libraries (numpy, the retrieval and generation stages)
are imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.run.answers import answer_excerpt, check_table, finished_rows
    from runner.run.checks import CHECK_FAIL, CHECK_PASS, CHECK_TAG_PREFIX, reused_spans, split_sections
    from runner.run.drift import Drift, compare
    from runner.run.engine import RunInterrupted, run_experiment
    from runner.run.environment import TAGGED_PACKAGES
    from runner.run.lock import execution_lock
    from runner.run.manifest import build_manifest
    from runner.run.prepare import stage_metrics
    from runner.run.results import CellResult
    from runner.run.sinks import JsonlSink, read_results, run_dir
    from runner.run.summary import RunSummary
    from runner.run.tracker import NullTracker, Tracker

_EXPORTS = {
    "answer_excerpt": "runner.run.answers",
    "check_table": "runner.run.answers",
    "finished_rows": "runner.run.answers",
    "CHECK_FAIL": "runner.run.checks",
    "CHECK_PASS": "runner.run.checks",
    "CHECK_TAG_PREFIX": "runner.run.checks",
    "reused_spans": "runner.run.checks",
    "split_sections": "runner.run.checks",
    "Drift": "runner.run.drift",
    "compare": "runner.run.drift",
    "RunInterrupted": "runner.run.engine",
    "run_experiment": "runner.run.engine",
    "TAGGED_PACKAGES": "runner.run.environment",
    "execution_lock": "runner.run.lock",
    "build_manifest": "runner.run.manifest",
    "stage_metrics": "runner.run.prepare",
    "CellResult": "runner.run.results",
    "JsonlSink": "runner.run.sinks",
    "read_results": "runner.run.sinks",
    "run_dir": "runner.run.sinks",
    "RunSummary": "runner.run.summary",
    "NullTracker": "runner.run.tracker",
    "Tracker": "runner.run.tracker",
}

__all__ = [
    "CHECK_FAIL",
    "CHECK_PASS",
    "CHECK_TAG_PREFIX",
    "TAGGED_PACKAGES",
    "CellResult",
    "Drift",
    "JsonlSink",
    "NullTracker",
    "RunInterrupted",
    "RunSummary",
    "Tracker",
    "answer_excerpt",
    "build_manifest",
    "check_table",
    "compare",
    "execution_lock",
    "finished_rows",
    "read_results",
    "reused_spans",
    "run_dir",
    "run_experiment",
    "split_sections",
    "stage_metrics",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runner.run' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once resolved, a plain attribute (and monkeypatch.setattr works on it)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
