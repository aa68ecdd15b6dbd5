"""Read executions back from MLflow for the report: the parent run, and one row per cell from its children.

Each cell is counted once: child runs tagged `pov.superseded=true` and child runs whose MLflow status is
KILLED were redone and are ignored, as are unfinished child runs (no `pov.status`), and if one cell id still
appears twice the latest run wins. What was ignored is counted and shown, so a hand count can be matched.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runner.errors import UserError
from runner.spec import AXES, DEFAULT_POV_SCORE
from runner.tracking import (
    LIST_HINT,  # runner.tracking exports it once its __init__ does
    TRUE,
    Kind,
    Metrics,
    Params,
    Status,
    Tags,
    find_run,
    search_all,
    tag_is,
)

if TYPE_CHECKING:
    from runner.tracking.client import MlflowClient, Run


@dataclass
class CellRow:
    run_id: str
    cell_id: str
    axes: dict[str, str]
    """Value per axis of runner.spec.AXES, as the child run's params hold it ('?' when missing)."""
    status: str
    cause: str | None
    metrics: dict[str, float]
    checks: dict[str, str]
    end_time: int
    tags: dict[str, str] = field(default_factory=dict)
    """The child run's tags as stored (batch, attempts, audit flags among them)."""
    params: dict[str, str] = field(default_factory=dict)
    """The child run's params as stored (repeat and base cell id among them)."""
    artifact_uri: str = ""
    """Where the child run's files are (prompt, context, answer, stderr)."""

    @property
    def crashed(self) -> bool:
        return self.status == Status.CRASHED

    @property
    def prompt_tokens(self) -> float | None:
        """The rendered prompt's length: measured before generation, so crashed cells have it too."""
        for key in (Metrics.COMPLEXITY_PROMPT_TOKENS, Metrics.PROMPT_TOKENS):
            if key in self.metrics and not math.isnan(self.metrics[key]):
                return self.metrics[key]
        return None


@dataclass
class Execution:
    run_id: str
    run_name: str
    experiment_id: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    status: str
    start_time: int
    cells: list[CellRow] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    """Child runs left out: `superseded`, `killed`, `unfinished`, `duplicate`."""

    @property
    def label(self) -> str:
        return f"{self.run_name} ({self.run_id[:8]})"


def latest_execution(client: MlflowClient, spec_name: str, spec_hash: str | None) -> tuple[str, bool]:
    """Run id of the newest execution of a spec: same name and hash if there is one, else same name.
    Returns (run id, whether the hash matched)."""
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    base = f"{tag_is(Tags.KIND, Kind.EXECUTION)} AND {tag_is(Tags.SPEC_NAME, spec_name)}"
    order = ["attributes.start_time DESC"]
    if spec_hash:
        query = f"{base} AND {tag_is(Tags.SPEC_HASH, spec_hash)}"
        runs = search_all(client, exp_ids, query, order_by=order, limit=1)
        if runs:
            return runs[0].info.run_id, True
    runs = search_all(client, exp_ids, base, order_by=order, limit=1)
    if not runs:
        raise UserError(
            f"no execution of spec {spec_name!r} in the MLflow store; run `pov run` first "
            "(or pass --run RUN_ID)"
        )
    return runs[0].info.run_id, False


def load_execution(client: MlflowClient, run_id: str) -> Execution:
    """The parent run and its counted cells."""
    parent = find_run(client, run_id)
    if parent is None:
        raise UserError(f"no MLflow run with id {run_id!r} in this tracking store; {LIST_HINT}")
    tags = dict(parent.data.tags)
    if tags.get(Tags.KIND) != Kind.EXECUTION:
        hint = (
            f" (it is a cell of execution {tags[Tags.PARENT_RUN_ID]})" if Tags.PARENT_RUN_ID in tags else ""
        )
        raise UserError(
            f"run {run_id} is not a pov execution (tag {Tags.KIND}={tags.get(Tags.KIND)!r}){hint}"
        )
    ex = Execution(
        run_id,
        parent.info.run_name or run_id,
        parent.info.experiment_id,
        tags,
        dict(parent.data.params),
        dict(parent.data.metrics),
        parent.info.status,
        parent.info.start_time or 0,
    )
    children = search_all(client, [ex.experiment_id], tag_is(Tags.PARENT_RUN_ID, run_id))
    ex.cells, ex.ignored = count_cells(children)
    return ex


def count_cells(children: Iterable[Run]) -> tuple[list[CellRow], dict[str, int]]:
    """Child runs -> one row per cell, and how many runs were left out and why."""
    ignored: Counter[str] = Counter()
    by_cell: dict[str, CellRow] = {}
    for run in children:
        tags = run.data.tags
        if tags.get(Tags.KIND, Kind.CELL) != Kind.CELL:
            continue
        if tags.get(Tags.SUPERSEDED) == TRUE:
            ignored["superseded"] += 1
            continue
        if run.info.status == "KILLED":
            ignored["killed"] += 1
            continue
        status = tags.get(Tags.STATUS)
        if status not in (Status.FINISHED, Status.CRASHED):
            ignored["unfinished"] += 1
            continue
        params = run.data.params
        cell_id = tags.get(Tags.CELL_ID) or params.get(Params.CELL_ID) or run.info.run_name or run.info.run_id
        row = CellRow(
            run.info.run_id,
            cell_id,
            # Cells recorded before the scoring method was an axis scored stage 3 with the notebook's l2.
            {a: params.get(a, DEFAULT_POV_SCORE if a == "pov_score" else "?") for a in AXES},
            status,
            tags.get(Tags.CAUSE) if status == Status.CRASHED else None,
            dict(run.data.metrics),
            Tags.checks(tags),
            run.info.end_time or run.info.start_time or 0,
            dict(tags),
            dict(params),
            run.info.artifact_uri or "",
        )
        if cell_id in by_cell:
            ignored["duplicate"] += 1
            if row.end_time < by_cell[cell_id].end_time:
                continue
        by_cell[cell_id] = row
    return list(by_cell.values()), dict(ignored)
