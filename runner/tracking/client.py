"""The one way to reach MLflow: which tracking URI, a client for it, and paging through runs.

Used by the tracker, `pov rerun` and `pov report`, so the three agree on where runs are, read every page and
quote search filters alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from runner.errors import UserError
from runner.redaction import redact

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

DEFAULT_DB = "mlflow.db"
"""Where runs go when nothing says otherwise: MLflow 3's own default, a sqlite file in the working
directory, so that `mlflow ui` started there shows them."""
PAGE = 1000
"""Runs per search request (MLflow's server refuses more than 50,000; a page of 1,000 keeps each reply small)."""
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
"""MLflow's own request settings for a tracking server, unless the user set them. Its defaults (7 retries,
backoff factor 2, 120 s per request) spent 4 minutes on a closed port and 8 on a server gone mid-run; these
give up within seconds on a dead server and still ride out a blip."""
PROBE_TIMEOUT_S = 5.0


def resolve_tracking_uri(spec_uri: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the spec's `tracking.uri`, else `mlflow.db` in the working directory (as
    an absolute sqlite URI, as MLflow itself would name it)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return plain_sqlite_uri(env or spec_uri or f"sqlite:///{Path.cwd() / DEFAULT_DB}")


def plain_sqlite_uri(uri: str) -> str:
    """`uri` with a sqlite path's percent-escapes decoded (`sqlite:////a%20b/mlflow.db` -> `sqlite:////a b/mlflow.db`).

    MLflow writes a store in a folder with a space that way; SQLAlchemy decodes it when it opens the file, but
    MLflow first creates the parent folder from the encoded text, leaving an empty `a%20b/` beside the project."""
    if not uri.startswith("sqlite:///"):
        return uri
    path, sep, query = uri.removeprefix("sqlite:///").partition("?")
    return f"sqlite:///{unquote(path)}{sep}{query}"


def is_server(uri: str) -> bool:
    """Whether `uri` names a tracking server (reached over HTTP), not a local store."""
    return uri.split("://", 1)[0].lower() in ("http", "https")


def unreachable(uri: str) -> str | None:
    """Why the tracking server at `uri` cannot be reached (None: it answered, whatever the status). One GET
    of `/health` with a short timeout: an HTTP error status still proves the server is there."""
    import socket
    import urllib.error
    import urllib.request

    parts = urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None
    except OSError as e:  # URLError among them, wrapping the socket's own error as its reason
        reason: object = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {PROBE_TIMEOUT_S:.0f} s"
    if isinstance(reason, socket.gaierror):
        return f"unknown host {parts.hostname}"
    text = f"{reason.__class__.__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
    return redact(text)[:300]


def check_reachable(uri: str, fix: str = "") -> None:
    """UserError naming the server and the setting to fix when the tracking server at `uri` does not
    answer; nothing for a local store."""
    if not is_server(uri):
        return
    why = unreachable(uri)
    if why is not None:
        raise UserError(
            f"cannot reach the MLflow tracking server at {redact(uri)} ({why}); start it, or set "
            f"MLFLOW_TRACKING_URI / the spec's tracking.uri{fix}"
        )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite tracking URI (None for any other URI)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(os.path.abspath(uri.removeprefix("sqlite:///").split("?")[0]))


@contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Held while a sqlite store is opened (and so created and migrated, if new): MLflow's schema creation
    is not safe against a second process doing the same at once (the loser died on `duplicate column
    name: step`). An OS lock on `<db>.lock`, released by the OS if the process dies."""
    path = sqlite_path(uri)
    if path is None or not path.parent.is_dir():
        yield
        return
    import fcntl

    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only folder: a store there can only be read, and reading needs no lock
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # which releases the lock


def make_client(uri: str, *, must_exist: bool = False) -> MlflowClient:
    """An MlflowClient for `uri`. With `must_exist`, a sqlite file that is not there is a UserError (MLflow
    would create an empty store, and a reader would then report that it found nothing). A tracking server
    is asked with MLflow's request retries and timeout bounded (HTTP_BOUNDS), unless the user set them."""
    uri = plain_sqlite_uri(uri)
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
    if is_server(uri):
        # MLflow reads these at each request, so setting them now bounds every call this client makes.
        for name, value in HTTP_BOUNDS.items():
            os.environ.setdefault(name, value)
        check_reachable(uri)
    from mlflow.tracking import MlflowClient

    tune_sqlite(uri)
    with creation_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        if sqlite_path(uri) is not None:
            # MLflow creates and migrates the tables when the store is first used; make that happen here,
            # inside the lock, so that a second process waits and then finds them made.
            client.search_experiments(max_results=1)
    return client


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


def log_files(
    client: MlflowClient,
    tracking_uri: str,
    run_id: str,
    artifact_uri: str,
    files: dict[str, str],
    scratch: Path,
) -> None:
    """A run's files as artifacts, in one upload of `scratch` (emptied first) holding them."""
    for old in scratch.iterdir():
        old.unlink()
    for name, text in files.items():
        (scratch / name).write_text(text, encoding="utf-8")
    # client.log_artifacts(run_id) would first fetch the whole run again just to learn its artifact URI
    # (a third of the time per cell on sqlite); the run the caller just created already says it.
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    except Exception:
        client.log_artifacts(run_id, str(scratch))
        return
    repo.log_artifacts(str(scratch))
