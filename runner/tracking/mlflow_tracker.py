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
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.redaction import install_log_redaction, redact, secret_values
from runner.tracking import schema as schema
from runner.tracking.client import tune_sqlite

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from runner.run.results import CellResult
    from runner.spec import Cell, Experiment

BATCH_PARAMS = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
BATCH_METRICS = 1000  # MAX_METRICS_PER_BATCH
PAGE = 10_000
LIVE_STATUSES = ("FINISHED", "FAILED")


def _ms(t: float | None = None) -> int:
    return int((t if t else time.time()) * 1000)


class MlflowTracker:
    """Writes executions and cells to MLflow; the runner's parent process is its only writer."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str | None = None,
        *,
        experiment_id: str | None = None,
        rerun_of: str | None = None,
    ) -> None:
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
            # A progress bar per downloaded manifest is noise in the runner's output; so is the "View run"
            # link MLflow prints (after fetching the run once more) each time a run ends on a server.
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            from mlflow.tracking import MlflowClient

            tune_sqlite(self.tracking_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # ---------------------------------------------------------------------------------------- start

    def start(
        self,
        exp: Experiment,
        cells: list[Cell],
        manifest: dict[str, Any],
        *,
        fresh: bool = False,
        retry_crashed: bool = False,
    ) -> set[str]:
        """Open a new execution, or resume the latest unfinished one of this spec; return cells to skip."""
        install_log_redaction()
        self._t0 = time.monotonic()
        self._cells = {c.id: c for c in cells}
        self._models = {}
        for key, m in exp.spec.models.items():
            resolved = manifest.get("models", {}).get(key, {}).get("resolved_revision")
            self._models[key] = (m.name, m.revision or resolved or "none")
        try:
            eid = self._experiment(exp)
        except Exception as e:  # a server that is down, a path that cannot be written, a bad URI
            from runner.errors import UserError

            raise UserError(
                f"cannot use the MLflow tracking store {redact(self.tracking_uri)}: {redact(str(e))[:500]}\n"
                "check MLFLOW_TRACKING_URI or the spec's tracking.uri, or run with --no-track"
            ) from None
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

    def _search(
        self,
        eid: str,
        filter_string: str,
        view: str = "active",
        order_by: list[str] | None = None,
        max_results: int = PAGE,
    ) -> list[Run]:
        from mlflow.entities import ViewType

        view_type = ViewType.ALL if view == "all" else ViewType.ACTIVE_ONLY
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [eid], filter_string, view_type, min(PAGE, max_results), order_by, token
            )
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
        # Every execution of this spec is complete: continue the latest one, which has nothing left to do
        # unless cells were added (a run with --limit) or crashes are retried. Redoing hours of GPU work
        # takes asking for it (--fresh). A rerun is asked for explicitly: each is a new execution.
        return runs[0] if runs and not self.rerun_of else None

    def _parent_params(self, exp: Experiment, cells: list[Cell]) -> list[Any]:
        from mlflow.entities import Param

        return [Param(k, v) for k, v in schema.parent_params(exp, cells, secret_values()).items()]

    def _log_parent_artifacts(self, exp: Experiment, manifest: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="pov-exec-") as tmp:
            for rel, text in schema.execution_files(exp, manifest, secret_values()).items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            self.client.log_artifacts(self._require_run(), tmp)

    def _create(self, eid: str, exp: Experiment, cells: list[Cell], manifest: dict[str, Any]) -> None:
        name = f"{exp.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = schema.parent_tags(exp, manifest, self.rerun_of, secret_values())
        run = self.client.create_run(eid, tags=tags, run_name=name)
        self.run_id = run.info.run_id
        self._exec_start_ms = run.info.start_time or _ms()
        self.resumed = False
        self._wall_prior = 0.0
        self._live, self._replace = {}, {}
        self.client.log_batch(self.run_id, params=self._parent_params(exp, cells))
        self._log_parent_artifacts(exp, manifest)

    def _resume(
        self, parent: Run, exp: Experiment, cells: list[Cell], manifest: dict[str, Any], retry_crashed: bool
    ) -> set[str]:
        from mlflow.entities import RunTag

        from runner.run import compare

        self.run_id = pid = parent.info.run_id
        self.resumed = True
        self._exec_start_ms = parent.info.start_time or _ms()
        self._wall_prior = float(parent.data.metrics.get("wall_time_s", 0.0))
        children = self._search(
            parent.info.experiment_id, f"tags.`mlflow.parentRunId` = '{pid}'", max_results=10**9
        )
        by_cell: dict[str, list[Run]] = {}
        stale: list[Run] = []
        for child in children:
            cid = child.data.tags.get("pov.cell_id", "")
            status_tag = child.data.tags.get("pov.status")
            if (
                child.info.status in LIVE_STATUSES
                and status_tag in ("finished", "crashed")
                and cid in self._cells
                and child.data.tags.get("pov.superseded") != "true"
            ):
                by_cell.setdefault(cid, []).append(child)
            else:
                stale.append(child)  # left RUNNING by a kill, or half-written
        self._live, self._replace = {}, {}
        for cid, runs in by_cell.items():
            # Normally one per cell; two only if a kill landed between logging a retry and superseding the
            # crash it replaced. Keep a finished one over a crashed one, then the newest.
            runs.sort(
                key=lambda r: (r.data.tags.get("pov.status") == "finished", r.info.end_time or 0),
                reverse=True,
            )
            keep = runs[0]
            stale.extend(runs[1:])
            self._live[cid] = (
                keep.info.run_id,
                keep.data.tags["pov.status"],
                keep.data.tags.get("pov.cause"),
            )
        for child in stale:
            self._supersede(child.info.run_id, child.info.status)
        skip = set()
        for cid, (rid, status, _) in self._live.items():
            if status == "crashed" and retry_crashed:
                self._replace[cid] = rid
            else:
                skip.add(cid)
        sessions = int(parent.data.tags.get("pov.sessions", "1") or 1) + 1
        self.client.log_batch(
            pid,
            params=self._parent_params(exp, cells),
            tags=[RunTag("pov.state", "running"), RunTag("pov.sessions", str(sessions))],
        )
        if parent.info.status != "RUNNING":
            self.client.update_run(pid, status="RUNNING")
        stored = {f.path for f in self.client.list_artifacts(pid)}
        if not {"spec.yaml", "manifest.json"} <= stored:  # the kill came before they were written
            self._log_parent_artifacts(exp, manifest)
        else:
            self.drifts = self._manifest_drifts(pid, manifest, compare)
        kept_crashed = sum(1 for cid in skip if self._live[cid][1] == "crashed")
        print(
            f"pov: resuming execution {parent.info.run_name} ({pid}): {len(skip) - kept_crashed} finished, "
            f"{kept_crashed} crashed kept, {len(self._replace)} crashed to retry, {len(stale)} interrupted "
            f"child run(s) superseded",
            file=sys.stderr,
        )
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
        # A scratch folder per call, removed on the way out: a run that stops without `finish` (an
        # exception in the caller, a test's interrupted run) leaves nothing behind in the temp folder.
        with tempfile.TemporaryDirectory(prefix="pov-cell-") as scratch:
            self._scratch = Path(scratch)
            try:
                for result in results:
                    self._log_cell(pid, result, secrets)
            finally:
                self._scratch = None
        self._log_progress()

    def _log_cell(self, pid: str, r: CellResult, secrets: dict[str, str]) -> None:
        from mlflow.entities import Metric, Param

        tags = schema.cell_tags(r, pid, secrets)
        run = self.client.create_run(
            self._require_exp(), start_time=_ms(r.started_at), tags=tags, run_name=r.cell.id
        )
        rid = run.info.run_id
        end = _ms(r.ended_at)
        model = self._models.get(r.cell.model, (r.cell.model, "none"))
        params = [Param(k, v) for k, v in schema.cell_params(r, model, secrets).items()]
        metrics = [Metric(k, v, end, 0) for k, v in schema.cell_metrics(r).items()]
        while params or metrics:  # one call per cell unless a cell carries over 1,000 values
            p, params = params[:BATCH_PARAMS], params[BATCH_PARAMS:]
            m, metrics = metrics[: BATCH_METRICS - len(p)], metrics[BATCH_METRICS - len(p) :]
            self.client.log_batch(rid, metrics=m, params=p)
        self._write_artifacts(rid, run.info.artifact_uri, schema.cell_files(r, secrets))
        self.client.set_terminated(rid, "FINISHED" if r.status == "finished" else "FAILED", end_time=end)
        old = self._replace.pop(r.cell.id, None)
        if old:  # the retried crash: only now, with its replacement in place, does it stop counting
            self._supersede(old, "FAILED")
        self._live[r.cell.id] = (rid, r.status, tags.get("pov.cause"))

    def _write_artifacts(self, rid: str, artifact_uri: str, files: dict[str, str]) -> None:
        """One log_artifacts call of a scratch folder holding the cell's files."""
        assert self._scratch is not None
        for old in self._scratch.iterdir():
            old.unlink()
        for name, text in files.items():
            (self._scratch / name).write_text(text, encoding="utf-8")
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
        causes = Counter(
            cause or "exception" for _, status, cause in self._live.values() if status == "crashed"
        )
        out = {
            "cells_total": float(len(self._cells)),
            "cells_finished": float(statuses["finished"]),
            "cells_crashed": float(statuses["crashed"]),
            "wall_time_s": self._wall_prior + (time.monotonic() - self._t0),
        }
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
            self.client.log_batch(self._require_run(), metrics=metrics[i : i + BATCH_METRICS])

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
            if (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and k not in totals
                and not k.startswith("crashed.")
            ):
                extra[f"session.{k}"] = float(v)
        self._log_progress(extra)
        complete = all(cid in self._live for cid in self._cells)
        state = "finished" if complete else "interrupted"
        self.client.set_tag(pid, "pov.state", state)
        self.client.set_terminated(pid, "FINISHED" if complete else "KILLED")
