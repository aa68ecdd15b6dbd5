"""MlflowTracker: one parent run per execution of `pov run`, one child run per cell (schema in CONTRACTS.md).

Crash safety rests on one ordering: a child run is created with all its tags, then its params and metrics
go in one `log_batch`, its artifacts in one `log_artifacts` of a temp folder, and only then is it set
FINISHED (cell finished) or FAILED (cell crashed). A `kill -9` anywhere in between leaves it RUNNING, and
the next `pov run` of the same spec marks it KILLED, tags it `pov.superseded=true`, soft-deletes it and runs
the cell again. So after any number of kills each cell has exactly one live (not deleted) child, and it is
FINISHED or FAILED with the `pov.status` tag. Superseded children stay in the store (deleted runs are kept
until `mlflow gc`), so the history of a retried crash is not lost, but no default search sees them.

The parent's `pov.state` tag is `running` while an execution is under way (and after a kill), `finished`
once every cell has a live child, and `interrupted` when the runner stopped early on its own (Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.secrets import install_log_redaction, redact, secret_values

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from runner.loader import Experiment
    from runner.matrix import Cell
    from runner.results import CellResult

MAX_PARAM = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG = 8000  # MAX_TAG_VAL_LENGTH
BATCH_PARAMS = 100  # MAX_PARAMS_TAGS_PER_BATCH
BATCH_METRICS = 1000  # MAX_METRICS_PER_BATCH
PAGE = 10_000
LIVE_STATUSES = ("FINISHED", "FAILED")
TRACKED_PACKAGES = ("python", "torch", "transformers", "unsloth", "chromadb", "mlflow", "sentence-transformers")


def _ms(t: float | None = None) -> int:
    return int((t if t else time.time()) * 1000)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


@functools.lru_cache(maxsize=4096)
def _key(name: str) -> str:
    """A metric or tag name MLflow accepts: a bad character in a check's name must not stop the run."""
    return re.sub(r"[^/\w.\- :]", "_", name).strip("/") or "_"


def _short_hash(obj: Any) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def ranking_hash(context: dict[str, Any]) -> str:
    """Hash of the chunk ids of the three stages in rank order: equal hashes mean identical rankings."""
    stages = context.get("stages", []) if isinstance(context, dict) else []
    return _short_hash([[s.get("name"), s.get("ids")] for s in stages if isinstance(s, dict)])


def stage_metrics(context: dict[str, Any]) -> dict[str, float]:
    """Top score of each stage and the mean of the last, from a RetrievalResult.to_dict()."""
    out: dict[str, float] = {}
    stages = context.get("stages", []) if isinstance(context, dict) else []
    for i, stage in enumerate(stages[:3], 1):
        scores = [float(s) for s in (stage.get("scores") or []) if isinstance(s, (int, float))]
        if scores:
            out[f"stage{i}_top_score"] = max(scores)
            if i == 3:
                out["stage3_mean_score"] = sum(scores) / len(scores)
    return out


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
    path = os.path.abspath(tracking_uri[len("sqlite:///"):].split("?")[0])
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


class MlflowTracker:
    """Writes executions and cells to MLflow; the runner's parent process is its only writer."""

    def __init__(self, tracking_uri: str, experiment_name: str | None = None, *,
                 experiment_id: str | None = None, rerun_of: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.experiment_id = experiment_id
        self.rerun_of = rerun_of
        self.run_id: str | None = None
        self.resumed = False
        self.drifts: list[Any] = []
        """Manifest drifts between the first session of a resumed execution and this one."""
        self._client: MlflowClient | None = None
        self._cells: dict[str, Cell] = {}
        self._live: dict[str, tuple[str, str, str | None]] = {}  # cell id -> (run id, status, cause)
        self._replace: dict[str, str] = {}  # cell id -> crashed child to supersede once the retry is logged
        self._models: dict[str, tuple[str, str]] = {}  # model key -> (name, revision)
        self._exec_start_ms = 0
        self._wall_prior = 0.0
        self._t0 = time.monotonic()
        self._scratch: Path | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            # A progress bar per downloaded manifest is noise in the runner's output.
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow.tracking import MlflowClient

            tune_sqlite(self.tracking_uri)

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # ---------------------------------------------------------------------------------------- start

    def start(self, exp: Experiment, cells: list[Cell], manifest: dict[str, Any], *, fresh: bool = False,
              retry_crashed: bool = False) -> set[str]:
        """Open a new execution, or resume the latest unfinished one of this spec; return cells to skip."""
        install_log_redaction()
        self._t0 = time.monotonic()
        self._cells = {c.id: c for c in cells}
        self._models = {}
        for key, m in exp.spec.models.items():
            resolved = manifest.get("models", {}).get(key, {}).get("resolved_revision")
            self._models[key] = (m.name, m.revision or resolved or "none")
        eid = self._experiment(exp)
        parent = None if fresh else self._resumable(eid, exp.spec_hash, retry_crashed)
        if parent is None:
            self._create(eid, exp, cells, manifest)
            return set()
        return self._resume(parent, exp, cells, manifest, retry_crashed)

    def _experiment(self, exp: Experiment) -> str:
        if self.experiment_id:
            return self.experiment_id
        from mlflow.exceptions import MlflowException

        name = self.experiment_name or exp.spec.tracking.experiment or exp.spec.name
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                self.experiment_id = self.client.create_experiment(name)
            except MlflowException:  # created by someone else in between
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            self.experiment_id = found.experiment_id
        assert self.experiment_id is not None
        return self.experiment_id

    def _search(self, eid: str, filter_string: str, view: str = "active", order_by: list[str] | None = None,
                max_results: int = PAGE) -> list[Run]:
        from mlflow.entities import ViewType

        view_type = ViewType.ALL if view == "all" else ViewType.ACTIVE_ONLY
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([eid], filter_string, view_type, min(PAGE, max_results), order_by,
                                           token)
            runs.extend(page)
            token = page.token
            if not token or len(runs) >= max_results:
                return runs

    def _resumable(self, eid: str, spec_hash: str, retry_crashed: bool) -> Run | None:
        query = f"tags.`pov.kind` = 'execution' AND tags.`pov.spec_hash` = '{spec_hash}'"
        if self.rerun_of:
            query += f" AND tags.`pov.rerun_of` = '{self.rerun_of}'"
        runs = self._search(eid, query, order_by=["attributes.start_time DESC"], max_results=1000)
        if not self.rerun_of:  # a rerun continues only its own killed attempts, never a plain run's
            runs = [r for r in runs if "pov.rerun_of" not in r.data.tags]
        for run in runs:
            if run.data.tags.get("pov.state") != "finished":
                return run
        if retry_crashed and runs and runs[0].data.metrics.get("cells_crashed", 0) > 0:
            return runs[0]
        return None

    def _parent_tags(self, exp: Experiment, manifest: dict[str, Any]) -> dict[str, str]:
        git = manifest.get("git", {})
        versions = manifest.get("versions", {})
        tags = {
            "pov.kind": "execution",
            "pov.spec_name": exp.spec.name,
            "pov.spec_hash": exp.spec_hash,
            "pov.state": "running",
            "pov.sessions": "1",
            "git.commit": git.get("commit") or "unknown",
            "git.branch": git.get("branch") or "unknown",
            "git.dirty": {True: "true", False: "false"}.get(git.get("dirty"), "unknown"),
            "gpu.name": manifest.get("gpu", {}).get("name") or "none",
            "corpus.fingerprint": manifest.get("corpus", {}).get("fingerprint") or "none",
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": str(exp.path),
        }
        for pkg in TRACKED_PACKAGES:
            tags[f"version.{pkg}"] = versions.get(pkg) or "not installed"
        if git.get("commit"):
            tags["mlflow.source.git.commit"] = git["commit"]
        if exp.spec.description:
            tags["mlflow.note.content"] = exp.spec.description
        if self.rerun_of:
            tags["pov.rerun_of"] = self.rerun_of
        secrets = secret_values()
        return {k: _cut(redact(str(v), secrets), MAX_TAG) for k, v in tags.items()}

    def _parent_params(self, exp: Experiment, cells: list[Cell]) -> list[Any]:
        from mlflow.entities import Param

        from runner.spec import AXES

        params = {"spec_name": exp.spec.name, "spec_hash": exp.spec_hash}
        for axis in AXES:
            values = dict.fromkeys(c.k_label if axis == "k" else str(getattr(c, axis)) for c in cells)
            params[f"axis.{axis}"] = ",".join(values)
        secrets = secret_values()
        return [Param(k, _cut(redact(v, secrets), MAX_PARAM)) for k, v in params.items()]

    def _log_parent_artifacts(self, exp: Experiment, manifest: dict[str, Any]) -> None:
        from runner.rerun import snapshot_files

        secrets = secret_values()
        files = snapshot_files(exp)
        files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True, default=str)
        with tempfile.TemporaryDirectory(prefix="pov-exec-") as tmp:
            for rel, text in files.items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(redact(text, secrets), encoding="utf-8")
            self.client.log_artifacts(self._require_run(), tmp)

    def _create(self, eid: str, exp: Experiment, cells: list[Cell], manifest: dict[str, Any]) -> None:
        name = f"{exp.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = self.client.create_run(eid, tags=self._parent_tags(exp, manifest), run_name=name)
        self.run_id = run.info.run_id
        self._exec_start_ms = run.info.start_time or _ms()
        self.resumed = False
        self._wall_prior = 0.0
        self._live, self._replace = {}, {}
        self.client.log_batch(self.run_id, params=self._parent_params(exp, cells))
        self._log_parent_artifacts(exp, manifest)

    def _resume(self, parent: Run, exp: Experiment, cells: list[Cell], manifest: dict[str, Any],
                retry_crashed: bool) -> set[str]:
        from mlflow.entities import RunTag

        from runner.manifest import compare

        self.run_id = pid = parent.info.run_id
        self.resumed = True
        self._exec_start_ms = parent.info.start_time or _ms()
        self._wall_prior = float(parent.data.metrics.get("wall_time_s", 0.0))
        children = self._search(parent.info.experiment_id, f"tags.`mlflow.parentRunId` = '{pid}'",
                                max_results=10**9)
        by_cell: dict[str, list[Run]] = {}
        stale: list[Run] = []
        for child in children:
            cid = child.data.tags.get("pov.cell_id", "")
            status_tag = child.data.tags.get("pov.status")
            if child.info.status in LIVE_STATUSES and status_tag in ("finished", "crashed") and cid in self._cells:
                by_cell.setdefault(cid, []).append(child)
            else:
                stale.append(child)  # left RUNNING by a kill, or half-written
        self._live, self._replace = {}, {}
        for cid, runs in by_cell.items():
            # Normally one per cell; two only if a kill landed between logging a retry and superseding the
            # crash it replaced. Keep a finished one over a crashed one, then the newest.
            runs.sort(key=lambda r: (r.data.tags.get("pov.status") == "finished", r.info.end_time or 0),
                      reverse=True)
            keep = runs[0]
            stale.extend(runs[1:])
            self._live[cid] = (keep.info.run_id, keep.data.tags["pov.status"], keep.data.tags.get("pov.cause"))
        for child in stale:
            self._supersede(child.info.run_id, child.info.status)
        skip = set()
        for cid, (rid, status, _) in self._live.items():
            if status == "crashed" and retry_crashed:
                self._replace[cid] = rid
            else:
                skip.add(cid)
        sessions = int(parent.data.tags.get("pov.sessions", "1") or 1) + 1
        self.client.log_batch(pid, params=self._parent_params(exp, cells),
                              tags=[RunTag("pov.state", "running"), RunTag("pov.sessions", str(sessions))])
        if parent.info.status != "RUNNING":
            self.client.update_run(pid, status="RUNNING")
        stored = {f.path for f in self.client.list_artifacts(pid)}
        if not {"spec.yaml", "manifest.json"} <= stored:  # the kill came before they were written
            self._log_parent_artifacts(exp, manifest)
        else:
            self.drifts = self._manifest_drifts(pid, manifest, compare)
        kept_crashed = sum(1 for cid in skip if self._live[cid][1] == "crashed")
        print(f"pov: resuming execution {parent.info.run_name} ({pid}): {len(skip) - kept_crashed} finished, "
              f"{kept_crashed} crashed kept, {len(self._replace)} crashed to retry, {len(stale)} interrupted "
              f"child run(s) superseded", file=sys.stderr)
        for drift in self.drifts:
            print(f"pov: warning: changed since this execution began: {drift}", file=sys.stderr)
        return skip

    def _manifest_drifts(self, pid: str, manifest: dict[str, Any], compare: Any) -> list[Any]:
        with tempfile.TemporaryDirectory(prefix="pov-manifest-") as tmp:
            try:
                path = self.client.download_artifacts(pid, "manifest.json", tmp)
                old = json.loads(Path(path).read_text(encoding="utf-8"))
            except Exception:  # an unreadable manifest only costs the warning
                return []
        return list(compare(old, manifest))

    def _supersede(self, run_id: str, status: str) -> None:
        if status not in ("FINISHED", "FAILED", "KILLED"):
            self.client.set_terminated(run_id, "KILLED")
        self.client.set_tag(run_id, "pov.superseded", "true")
        self.client.delete_run(run_id)

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MlflowTracker.start() must be called first")
        return self.run_id

    # ------------------------------------------------------------------------------------------ log

    def log(self, results: list[CellResult]) -> None:
        """Record a batch of cells: each child fully logged, then set FINISHED/FAILED."""
        pid = self._require_run()
        if not results:
            return
        secrets = secret_values()
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="pov-cell-"))
        for result in results:
            self._log_cell(pid, result, secrets)
        self._log_progress()

    def _log_cell(self, pid: str, r: CellResult, secrets: dict[str, str]) -> None:
        from mlflow.entities import Metric, Param

        cell = r.cell
        tags = {
            "mlflow.parentRunId": pid,
            "pov.kind": "cell",
            "pov.cell_id": cell.id,
            "pov.status": r.status,
            "pov.ranking_hash": ranking_hash(r.context),
        }
        if r.output is not None:
            tags["pov.output_hash"] = _short_hash(r.output)
        if r.status == "crashed":
            tags["pov.cause"] = r.cause or "exception"
            if r.error:
                tags["pov.error"] = _cut(r.error, 500)
        for k, v in r.tags.items():
            tags.setdefault(k, str(v))
        tags = {_key(redact(k, secrets)): _cut(redact(str(v), secrets), MAX_TAG) for k, v in tags.items()}
        run = self.client.create_run(self._require_exp(), start_time=_ms(r.started_at), tags=tags,
                                     run_name=cell.id)
        rid = run.info.run_id
        model_name, revision = self._models.get(cell.model, (cell.model, "none"))
        # The engine hashes the folder it actually loaded; that beats what the spec or the manifest says.
        model_name = r.tags.get("model_name", model_name)
        revision = r.tags.get("model_revision", revision)
        params = {"cell_id": cell.id, "model": cell.model, "template": cell.template, "persona": cell.persona,
                  "pov_set": cell.pov_set, "k": cell.k_label, "question": cell.question,
                  "model_name": model_name, "model_revision": revision}
        end = _ms(r.ended_at)
        values = {**stage_metrics(r.context), **r.metrics}
        metrics = [Metric(_key(k), float(v), end, 0) for k, v in values.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))]
        plist = [Param(k, _cut(redact(str(v), secrets), MAX_PARAM)) for k, v in params.items()]
        while plist or metrics:  # one call per cell unless a cell carries over 1,000 values
            p, plist = plist[:BATCH_PARAMS], plist[BATCH_PARAMS:]
            m, metrics = metrics[:BATCH_METRICS - len(p)], metrics[BATCH_METRICS - len(p):]
            self.client.log_batch(rid, metrics=m, params=p)
        self._write_artifacts(rid, run.info.artifact_uri, r, secrets)
        self.client.set_terminated(rid, "FINISHED" if r.status == "finished" else "FAILED", end_time=end)
        old = self._replace.pop(cell.id, None)
        if old:  # the retried crash: only now, with its replacement in place, does it stop counting
            self._supersede(old, "FAILED")
        self._live[cell.id] = (rid, r.status, tags.get("pov.cause"))

    def _write_artifacts(self, rid: str, artifact_uri: str, r: CellResult, secrets: dict[str, str]) -> None:
        assert self._scratch is not None
        for old in self._scratch.iterdir():
            old.unlink()
        # Redacted as text: redact() also finds a secret in its JSON-escaped form.
        files = {"prompt.txt": r.prompt, "context.json": json.dumps(r.context, indent=1, ensure_ascii=False,
                                                                   default=str)}
        if r.output is not None:
            files["output.md"] = r.output
        if r.status == "crashed":
            files["stderr.txt"] = "\n".join(x for x in (r.error, r.stderr_tail) if x) or "(no output)"
        for name, text in files.items():
            (self._scratch / name).write_text(redact(text, secrets), encoding="utf-8")
        # client.log_artifacts(rid) would first fetch the whole run again just to learn its artifact URI
        # (a third of the time per cell on sqlite); the run we just created already says it.
        try:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            repo = get_artifact_repository(artifact_uri, tracking_uri=self.tracking_uri)
        except Exception:
            self.client.log_artifacts(rid, str(self._scratch))
            return
        repo.log_artifacts(str(self._scratch))

    def _require_exp(self) -> str:
        if self.experiment_id is None:
            raise RuntimeError("MlflowTracker.start() must be called first")
        return self.experiment_id

    def _totals(self) -> dict[str, float]:
        statuses = Counter(status for _, status, _ in self._live.values())
        causes = Counter(cause or "exception" for _, status, cause in self._live.values() if status == "crashed")
        out = {"cells_total": float(len(self._cells)), "cells_finished": float(statuses["finished"]),
               "cells_crashed": float(statuses["crashed"]),
               "wall_time_s": self._wall_prior + (time.monotonic() - self._t0)}
        out.update({f"crashed.{c}": float(n) for c, n in causes.items()})
        return out

    def _log_progress(self, extra: dict[str, float] | None = None) -> None:
        from mlflow.entities import Metric

        now = _ms()
        # Step = ms since the execution began: increases across resumed sessions, so the latest value wins.
        step = max(0, now - self._exec_start_ms)
        values = {**(extra or {}), **self._totals()}
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), BATCH_METRICS):
            self.client.log_batch(self._require_run(), metrics=metrics[i:i + BATCH_METRICS])

    # --------------------------------------------------------------------------------------- finish

    def finish(self, summary: Any) -> None:
        """Close the execution: totals over every session, `pov.state`, and the run's status."""
        pid = self._require_run()
        if dataclasses.is_dataclass(summary) and not isinstance(summary, type):
            summary = dataclasses.asdict(summary)
        elif not isinstance(summary, dict):
            summary = dict(getattr(summary, "__dict__", {}) or {})
        totals = self._totals()
        extra = {}
        for k, v in summary.items():
            if (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and k not in totals and not k.startswith("crashed.")):
                extra[f"session.{k}"] = float(v)
        self._log_progress(extra)
        complete = all(cid in self._live for cid in self._cells)
        state = "finished" if complete else "interrupted"
        self.client.set_tag(pid, "pov.state", state)
        self.client.set_terminated(pid, "FINISHED" if complete else "KILLED")
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
