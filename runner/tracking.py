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
    """Records nothing (`--no-track`); same methods as the real one."""

    run_id: str | None = None

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


_TUNED: set[str] = set()


def tune_sqlite(tracking_uri: str) -> None:
    """Put a sqlite tracking store in WAL mode with synchronous=NORMAL, for the connections this process opens.

    MLflow commits several times per call, and in sqlite's default mode every commit waits for the disk
    (fsync of the journal and the database): that alone made logging a cell take 30-40 ms. In WAL mode with
    synchronous=NORMAL a commit only appends to the log. A killed process loses nothing it committed (the
    data is in the OS's cache); only a power cut may drop the last transactions, and never corrupts the file.
    WAL persists in the file, so `mlflow ui` and later runs use it too (it needs a local disk, not NFS).
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = os.path.abspath(tracking_uri[len("sqlite:///") :].split("?")[0])
    if path in _TUNED:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if not isinstance(dbapi_conn, sqlite3.Connection):
            return
        row = dbapi_conn.execute("PRAGMA database_list").fetchone()
        if row and row[2] and os.path.abspath(row[2]) in _TUNED:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    if not _TUNED:
        event.listen(Engine, "connect", on_connect)
    _TUNED.add(path)
