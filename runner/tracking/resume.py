"""Resuming an execution: which one `pov run` continues, which of its child runs still count, and how one
that no longer counts is put aside (superseded).

A child counts (is live) when MLflow has it FINISHED or FAILED with a `pov.status`, for a cell of today's
matrix, and not superseded. Anything else was left behind by a kill, or is the older of two children of one
cell; it is marked KILLED if still RUNNING, tagged `pov.superseded=true` and soft-deleted, so that no
default search sees it while `mlflow gc` has not run.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.tracking.client import search_all, tag_is
from runner.tracking.schema import SCHEMA_VERSION, TRUE, Artifacts, Kind, State, Status, Tags, stored_version

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

LIVE_STATUSES = ("FINISHED", "FAILED")
"""MLflow statuses of a child whose cell was fully logged."""
SNAPSHOT = frozenset({Artifacts.SPEC, Artifacts.MANIFEST})
"""The parent's artifacts that a rerun and the manifest drift check need."""
CANDIDATES = 1000
"""How many of a spec's latest executions are looked at for one to resume."""


@dataclass(frozen=True)
class LiveCell:
    """The child run that records a cell."""

    run_id: str
    status: str
    """`pov.status`: finished or crashed."""
    cause: str | None


def resumable(client: MlflowClient, experiment_id: str, spec_hash: str, rerun_of: str | None) -> Run | None:
    """The execution of this spec that `pov run` continues: the latest unfinished one, else the latest
    (which has nothing left to do unless cells were added or crashes are retried). A rerun continues only
    its own killed attempts, and never a finished one: each rerun is asked for, so each is new. Executions
    of another schema version are never continued."""
    query = f"{tag_is(Tags.KIND, Kind.EXECUTION)} AND {tag_is(Tags.SPEC_HASH, spec_hash)}"
    if rerun_of:
        query += f" AND {tag_is(Tags.RERUN_OF, rerun_of)}"
    runs = search_all(
        client, [experiment_id], query, order_by=["attributes.start_time DESC"], limit=CANDIDATES
    )
    runs = [r for r in runs if stored_version(r.data.tags) == SCHEMA_VERSION]
    if not rerun_of:
        runs = [r for r in runs if Tags.RERUN_OF not in r.data.tags]
    for run in runs:
        if run.data.tags.get(Tags.STATE) != State.FINISHED:
            return run
    # Redoing hours of GPU work takes asking for it (--fresh).
    return runs[0] if runs and not rerun_of else None


def children(client: MlflowClient, experiment_id: str, parent_id: str) -> list[Run]:
    """Every active child run of an execution."""
    return search_all(client, [experiment_id], tag_is(Tags.PARENT_RUN_ID, parent_id))


def triage(kids: Iterable[Run], cell_ids: Container[str]) -> tuple[dict[str, LiveCell], list[Run]]:
    """The live child of each cell, and the children to supersede."""
    by_cell: dict[str, list[Run]] = {}
    stale: list[Run] = []
    for child in kids:
        tags = child.data.tags
        if (
            child.info.status in LIVE_STATUSES
            and tags.get(Tags.STATUS) in (Status.FINISHED, Status.CRASHED)
            and tags.get(Tags.CELL_ID, "") in cell_ids
            and tags.get(Tags.SUPERSEDED) != TRUE
        ):
            by_cell.setdefault(tags[Tags.CELL_ID], []).append(child)
        else:
            stale.append(child)  # left RUNNING by a kill, or half-written
    live: dict[str, LiveCell] = {}
    for cid, runs in by_cell.items():
        # Normally one per cell; two only if a kill landed between logging a retry and superseding the
        # crash it replaced. Keep a finished one over a crashed one, then the newest.
        runs.sort(
            key=lambda r: (r.data.tags[Tags.STATUS] == Status.FINISHED, r.info.end_time or 0), reverse=True
        )
        keep = runs[0]
        stale.extend(runs[1:])
        live[cid] = LiveCell(keep.info.run_id, keep.data.tags[Tags.STATUS], keep.data.tags.get(Tags.CAUSE))
    return live, stale


def supersede(client: MlflowClient, run_id: str, status: str) -> None:
    """Put a child aside: KILLED if it never ended, tagged superseded, soft-deleted."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        client.set_terminated(run_id, "KILLED")
    client.set_tag(run_id, Tags.SUPERSEDED, TRUE)
    client.delete_run(run_id)


def has_snapshot(client: MlflowClient, run_id: str) -> bool:
    """Whether an execution stored its spec.yaml and manifest.json (a kill while starting can leave it
    without them)."""
    return {f.path for f in client.list_artifacts(run_id)} >= SNAPSHOT
