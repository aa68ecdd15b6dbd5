"""The one way to reach MLflow: which tracking URI, a client for it, and paging through runs.

Used by the tracker, `pov rerun` and `pov report`, so the three agree on where runs are, read every page and
quote search filters alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

DEFAULT_DB = "mlflow.db"
"""Where runs go when nothing says otherwise: MLflow 3's own default, a sqlite file in the working
directory, so that `mlflow ui` started there shows them."""
PAGE = 1000
"""Runs per search request (MLflow's server refuses more than 50,000; a page of 1,000 keeps each reply small)."""


def resolve_tracking_uri(spec_uri: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the spec's `tracking.uri`, else `mlflow.db` in the working directory (as
    an absolute sqlite URI, as MLflow itself would name it)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env or spec_uri or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def make_client(uri: str, *, must_exist: bool = False) -> MlflowClient:
    """An MlflowClient for `uri`. With `must_exist`, a sqlite file that is not there is a UserError (MLflow
    would create an empty store, and a reader would then report that it found nothing)."""
    if must_exist and uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?")[0])
        if not path.is_file():
            raise UserError(
                f"no MLflow store at {path} (tracking URI {uri}); run `pov run` first, or point "
                "MLFLOW_TRACKING_URI (or the spec's tracking.uri) at the store that holds the runs"
            )
    # A progress bar per downloaded artifact is noise in the runner's output; so is the "View run" link
    # MLflow prints (after fetching the run once more) each time a run ends on a server.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow.tracking import MlflowClient

    tune_sqlite(uri)
    return MlflowClient(tracking_uri=uri)


def search_all(
    client: MlflowClient,
    experiment_ids: list[str],
    filter_string: str,
    *,
    deleted_too: bool = False,
    order_by: list[str] | None = None,
    limit: int | None = None,
) -> list[Run]:
    """Every run matching `filter_string` (active ones, or all with `deleted_too`), page after page, up
    to `limit`."""
    from mlflow.entities import ViewType

    view = ViewType.ALL if deleted_too else ViewType.ACTIVE_ONLY
    runs: list[Run] = []
    token = None
    while True:
        want = PAGE if limit is None else max(1, min(PAGE, limit - len(runs)))
        page = client.search_runs(experiment_ids, filter_string, view, want, order_by, token)
        runs.extend(page)
        token = page.token
        if not token or (limit is not None and len(runs) >= limit):
            return runs if limit is None else runs[:limit]


def find_run(client: MlflowClient, run_id: str) -> Run | None:
    """The run with this id, or None when the store has none (a malformed id included). Other failures (a
    server that is down) propagate."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def quote(value: str) -> str:
    """`value` as a string literal in an MLflow search filter."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def tag_is(name: str, value: str) -> str:
    """The search filter for runs whose tag `name` is `value`."""
    return f"tags.`{name}` = {quote(value)}"


def download_json(client: MlflowClient, run_id: str, path: str) -> Any:
    """A JSON artifact of a run, parsed (fetched into a temporary folder that is removed again)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pov-artifact-") as tmp:
        local = client.download_artifacts(run_id, path, tmp)
        return json.loads(Path(local).read_text(encoding="utf-8"))


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
