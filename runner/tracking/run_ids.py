"""Run ids as people type them: the report shows the first 8 characters of an execution's run id, and
`pov rerun` and `pov report --run/--compare` take any unique prefix of at least MIN_PREFIX of them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from runner.errors import UserError
from runner.tracking.client import search_all
from runner.tracking.schema import Kind, Tags

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

RUN_ID_LEN = 32
"""MLflow's run ids are 32 lowercase hex characters (a uuid4 without dashes)."""
MIN_PREFIX = 6
"""Shortest prefix taken: 16 million values, so a store's few hundred executions rarely share one."""
_HEX = re.compile(r"^[0-9a-f]+$")
LIST_HINT = "list the executions with `mlflow ui` (in the folder that holds the store), or `pov report SPEC`"
"""How to find an execution's id, for messages about one that is not there."""


def resolve_run_id(client: MlflowClient, text: str) -> str:
    """The full run id of the execution that `text` (a run id, or a unique prefix of one) names.

    A full-length id is returned as given, unchecked (the caller reads the run and says what it is); a
    prefix is looked up among the executions (`pov.kind=execution`) of every experiment in the store. An
    unknown, ambiguous, too short or malformed id is a UserError saying what to do."""
    rid = text.strip().lower()
    if not rid or not _HEX.match(rid) or len(rid) > RUN_ID_LEN:
        raise UserError(
            f"{text!r} is not a run id: a run id is {RUN_ID_LEN} hexadecimal characters (or a unique prefix "
            f"of at least {MIN_PREFIX} of them, as the report shows it); {LIST_HINT}"
        )
    if len(rid) == RUN_ID_LEN:
        return rid
    if len(rid) < MIN_PREFIX:
        raise UserError(
            f"run id {text!r} is too short: give at least {MIN_PREFIX} of its characters (the report shows 8)"
        )
    # The prefix is hex, so it holds no LIKE wildcard; MLflow matches run ids by LIKE in every store.
    runs = _search(client, f"attributes.run_id LIKE '{rid}%'")
    executions = [r for r in runs if r.data.tags.get(Tags.KIND) == Kind.EXECUTION]
    if not executions and len(runs) == 1:
        tags = runs[0].data.tags
        if tags.get(Tags.KIND) == Kind.CELL or Tags.PARENT_RUN_ID in tags:
            raise UserError(
                f"run {runs[0].info.run_id} is a cell of execution {tags.get(Tags.PARENT_RUN_ID, '?')}; "
                "name the execution instead"
            )
        raise UserError(
            f"run {runs[0].info.run_id} is not a pov-runner execution (no tag {Tags.KIND}={Kind.EXECUTION})"
        )
    return pick_run_id(rid, executions)


def pick_run_id(prefix: str, executions: Iterable[Run]) -> str:
    """The id of the one execution among `executions` whose id starts with `prefix`."""
    found = {r.info.run_id: r for r in executions if r.info.run_id.startswith(prefix)}
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise UserError(f"no execution whose run id starts with {prefix!r} in this MLflow store; {LIST_HINT}")
    shown = sorted(found.values(), key=lambda r: -(r.info.start_time or 0))
    lines = "\n".join(f"  {_describe(r)}" for r in shown[:20])
    more = f"\n  and {len(shown) - 20} more" if len(shown) > 20 else ""
    raise UserError(
        f"run id prefix {prefix!r} is ambiguous: {len(found)} executions start with it; give more of it:\n"
        f"{lines}{more}"
    )


def _describe(run: Run) -> str:
    started = ""
    if run.info.start_time:
        at = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc)
        started = f", started {at:%Y-%m-%d %H:%M} UTC"
    spec = run.data.tags.get(Tags.SPEC_NAME)
    return f"{run.info.run_id}  {run.info.run_name or ''}{f' (spec {spec})' if spec else ''}{started}"


def _search(client: MlflowClient, filter_string: str) -> list[Run]:
    experiment_ids: list[str] = []
    token = None
    while True:  # every page of experiments: a store can hold more than one page of them
        page = client.search_experiments(max_results=1000, page_token=token)
        experiment_ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    return search_all(client, experiment_ids, filter_string) if experiment_ids else []
