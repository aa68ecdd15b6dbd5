"""MlflowTracker: one parent run per execution of `pov run`, one child run per cell, under the names in
runner.tracking.schema (the values come from runner.tracking.records).

Crash safety rests on one ordering: a child run is created with all its tags, then its params and metrics
go in one `log_batch`, its artifacts in one `log_artifacts` of a temp folder, and only then is it set
FINISHED (cell finished) or FAILED (cell crashed). A `kill -9` anywhere in between leaves it RUNNING, and
the next `pov run` of the same spec marks it KILLED, tags it `pov.superseded=true`, soft-deletes it and runs
the cell again (runner.tracking.resume). So after any number of kills each cell has exactly one live (not
deleted) child, and it is FINISHED or FAILED with the `pov.status` tag. Superseded children stay in the
store (deleted runs are kept until `mlflow gc`), so the history of a retried crash is not lost, but no
default search sees them.

The parent's `pov.state` tag is `running` while an execution is under way (and after a kill), `finished`
once every cell has a live child, and `interrupted` when the runner stopped early on its own (Ctrl-C).

A tracking server that does not answer is a UserError before anything is created, and a RunAborted once
the execution is under way (its cells are all in the run folder's results.jsonl too, and the next run
resumes); MLflow's request retries are bounded (runner.tracking.client), so either comes within seconds.

Each cell is also an MLflow trace (runner.tracking.traces; off with `tracking.traces: false`), written after
its child run's values and files and before the child is set FINISHED or FAILED: a kill leaves at most the
trace of a child that is then superseded, and the trace is tagged `pov.superseded` with it.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunAborted, UserError
from runner.redaction import install_log_redaction, redact, secret_values
from runner.run import run_dir
from runner.tracking import records
from runner.tracking.client import (
    check_reachable,
    download_json,
    is_server,
    log_files,
    make_client,
    unreachable,
)
from runner.tracking.resume import LiveCell, children, has_snapshot, resumable, supersede, triage
from runner.tracking.schema import (
    DEFAULT_CAUSE,
    NONE,
    SCHEMA_VERSION,
    Artifacts,
    Metrics,
    State,
    Status,
    Tags,
)
from runner.tracking.traces import TraceWriter

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from runner.run import CellResult, Drift
    from runner.spec import Cell, Experiment

BATCH_PARAMS = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
BATCH_METRICS = 1000  # MAX_METRICS_PER_BATCH
NO_TRACK = ", or run with --no-track"


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
        self.drifts: list[Drift] = []
        """Manifest drifts between the first session of a resumed execution and this one."""
        self._client: MlflowClient | None = None
        self._cells: dict[str, Cell] = {}
        self._live: dict[str, LiveCell] = {}
        self._replace: dict[str, str] = {}  # cell id -> crashed child to supersede once the retry is logged
        self._models: dict[str, tuple[str, str]] = {}  # model key -> (name, revision)
        self._exec_start_ms = 0
        self._wall_prior = 0.0
        self._t0 = time.monotonic()
        self._exp: Experiment | None = None
        self._aborted: RunAborted | None = None
        self._traces: TraceWriter | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = make_client(self.tracking_uri)
        return self._client

    # ---------------------------------------------------------------------------------------- start

    def check(self) -> None:
        """A tracking server that is down is reported before the run indexes its corpus or builds models."""
        check_reachable(self.tracking_uri, NO_TRACK)

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
        check_reachable(self.tracking_uri, NO_TRACK)
        self._t0 = time.monotonic()
        self._exp, self._aborted = exp, None
        self._cells = {c.id: c for c in cells}
        self._models = {}
        for key, m in exp.spec.models.items():
            resolved = manifest.get("models", {}).get(key, {}).get("resolved_revision")
            self._models[key] = (m.name, m.revision or resolved or NONE)
        self._traces = None
        if exp.spec.tracking.traces:
            questions = {qid: q.text for qid, q in exp.questions.items()}
            self._traces = TraceWriter(
                self.tracking_uri, questions, {k: v[0] for k, v in self._models.items()}
            )
        try:
            eid = self._experiment(exp)
        except UserError:
            raise
        except Exception as e:  # a server that is down, a path that cannot be written, a bad URI
            self._check_answering(e)
            raise UserError(
                f"cannot use the MLflow tracking store {redact(self.tracking_uri)}: {redact(str(e))[:500]}\n"
                "check MLFLOW_TRACKING_URI or the spec's tracking.uri, or run with --no-track"
            ) from None
        try:
            parent = None if fresh else resumable(self.client, eid, exp.spec_hash, self.rerun_of)
            if parent is None:
                self._create(eid, exp, cells, manifest)
                return set()
            return self._resume(parent, exp, cells, manifest, retry_crashed)
        except Exception as e:
            self._check_answering(e)
            raise

    def _check_answering(self, error: Exception) -> None:
        """UserError when `error` came from a tracking server that no longer answers (before any cell)."""
        if is_server(self.tracking_uri) and not isinstance(error, (UserError, RunAborted)):
            check_reachable(self.tracking_uri, NO_TRACK)

    @contextmanager
    def _mid_run(self) -> Iterator[None]:
        """Turns a failure of a tracking server that stopped answering into RunAborted, saying what was
        recorded and how to resume; any other failure propagates as it is."""
        if self._aborted is not None:
            raise self._aborted
        try:
            yield
        except (UserError, RunAborted):
            raise
        except Exception:
            why = unreachable(self.tracking_uri) if is_server(self.tracking_uri) else None
            if why is None or self._exp is None or self.run_id is None:
                raise
            results = run_dir(self._exp, self.run_id) / "results.jsonl"
            self._aborted = RunAborted(
                redact(
                    f"MLflow at {self.tracking_uri} stopped answering after {len(self._live)} of "
                    f"{len(self._cells)} cells were recorded there ({why}); every cell is also in "
                    f"{results}; start the server again and run the same command to resume"
                )
            )
            raise self._aborted from None

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

    def _parent_params(self, exp: Experiment, cells: list[Cell]) -> list[Any]:
        from mlflow.entities import Param

        return [Param(k, v) for k, v in records.parent_params(exp, cells, secret_values()).items()]

    def _log_parent_artifacts(self, exp: Experiment, manifest: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="pov-exec-") as tmp:
            for rel, text in records.execution_files(exp, manifest, secret_values()).items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            self.client.log_artifacts(self._require_run(), tmp)

    def _create(self, eid: str, exp: Experiment, cells: list[Cell], manifest: dict[str, Any]) -> None:
        name = f"{exp.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = records.parent_tags(exp, manifest, self.rerun_of, secret_values())
        run = self.client.create_run(eid, tags=tags, run_name=name)
        self.run_id = run.info.run_id
        self._exec_start_ms = run.info.start_time or records.millis()
        self.resumed = False
        self._wall_prior = 0.0
        self._live, self._replace = {}, {}
        self.client.log_batch(self.run_id, params=self._parent_params(exp, cells))
        self._log_parent_artifacts(exp, manifest)

    def _resume(
        self, parent: Run, exp: Experiment, cells: list[Cell], manifest: dict[str, Any], retry_crashed: bool
    ) -> set[str]:
        from mlflow.entities import RunTag

        self.run_id = pid = parent.info.run_id
        self.resumed = True
        self._exec_start_ms = parent.info.start_time or records.millis()
        self._wall_prior = float(parent.data.metrics.get(Metrics.WALL_TIME_S, 0.0))
        self._live, stale = triage(children(self.client, parent.info.experiment_id, pid), self._cells)
        for child in stale:
            supersede(self.client, child.info.run_id, child.info.status)
        if self._traces is not None and stale:
            self._traces.supersede(self.client, parent.info.experiment_id, [c.info.run_id for c in stale])
        self._replace = {}
        skip = set()
        for cid, live in self._live.items():
            if live.status == Status.CRASHED and retry_crashed:
                self._replace[cid] = live.run_id
            else:
                skip.add(cid)
        sessions = int(parent.data.tags.get(Tags.SESSIONS, "1") or 1) + 1
        self.client.log_batch(
            pid,
            params=self._parent_params(exp, cells),
            tags=[
                RunTag(Tags.STATE, State.RUNNING),
                RunTag(Tags.SESSIONS, str(sessions)),
                # Only an execution of this version is resumed; one written before the tag existed gets it.
                RunTag(Tags.SCHEMA_VERSION, str(SCHEMA_VERSION)),
            ],
        )
        if parent.info.status != "RUNNING":
            self.client.update_run(pid, status="RUNNING")
        if not has_snapshot(self.client, pid):  # the kill came before they were written
            self._log_parent_artifacts(exp, manifest)
        else:
            self.drifts = self._manifest_drifts(pid, manifest)
        kept_crashed = sum(1 for cid in skip if self._live[cid].status == Status.CRASHED)
        print(
            f"pov: resuming execution {parent.info.run_name} ({pid}): {len(skip) - kept_crashed} finished, "
            f"{kept_crashed} crashed kept, {len(self._replace)} crashed to retry, {len(stale)} interrupted "
            f"child run(s) superseded",
            file=sys.stderr,
        )
        for drift in self.drifts:
            print(f"pov: warning: changed since this execution began: {drift}", file=sys.stderr)
        return skip

    def _manifest_drifts(self, pid: str, manifest: dict[str, Any]) -> list[Drift]:
        from runner.run import compare

        try:
            old = download_json(self.client, pid, Artifacts.MANIFEST)
        except Exception:  # an unreadable manifest only costs the warning
            return []
        return list(compare(old, manifest)) if isinstance(old, dict) else []

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MlflowTracker.start() must be called first")
        return self.run_id

    # ------------------------------------------------------------------------------------------ log

    def log(self, results: list[CellResult]) -> None:
        """Record a batch of cells: each child fully logged, the batch's traces, then each child set
        FINISHED/FAILED."""
        pid = self._require_run()
        if not results:
            return
        secrets = secret_values()
        with self._mid_run():
            # A scratch folder per call, removed on the way out: a run that stops without `finish` (an
            # exception in the caller, a test's interrupted run) leaves nothing behind in the temp folder.
            with tempfile.TemporaryDirectory(prefix="pov-cell-") as scratch:
                opened = [(r, self._open_cell(pid, r, secrets, Path(scratch))) for r in results]
            if self._traces is not None:
                self._traces.record(self._require_exp(), pid, opened, secrets)
            for r, rid in opened:
                self._close_cell(r, rid)
            self._log_progress()

    def _open_cell(self, pid: str, r: CellResult, secrets: dict[str, str], scratch: Path) -> str:
        """The child run, created with its tags, then its params, metrics and files; still RUNNING."""
        from mlflow.entities import Metric, Param

        tags = records.cell_tags(r, pid, secrets)
        run = self.client.create_run(
            self._require_exp(), start_time=records.millis(r.started_at), tags=tags, run_name=r.cell.id
        )
        rid = run.info.run_id
        end = records.millis(r.ended_at)
        model = self._models.get(r.cell.model, (r.cell.model, NONE))
        params = [Param(k, v) for k, v in records.cell_params(r, model, secrets).items()]
        metrics = [Metric(k, v, end, 0) for k, v in records.cell_metrics(r).items()]
        while params or metrics:  # one call per cell unless a cell carries over 1,000 values
            p, params = params[:BATCH_PARAMS], params[BATCH_PARAMS:]
            m, metrics = metrics[: BATCH_METRICS - len(p)], metrics[BATCH_METRICS - len(p) :]
            self.client.log_batch(rid, metrics=m, params=p)
        log_files(
            self.client,
            self.tracking_uri,
            rid,
            run.info.artifact_uri,
            records.cell_files(r, secrets),
            scratch,
        )
        return rid

    def _close_cell(self, r: CellResult, rid: str) -> None:
        finished = r.status == Status.FINISHED
        self.client.set_terminated(
            rid, "FINISHED" if finished else "FAILED", end_time=records.millis(r.ended_at)
        )
        old = self._replace.pop(r.cell.id, None)
        if old:  # the retried crash: only now, with its replacement in place, does it stop counting
            supersede(self.client, old, "FAILED")
            if self._traces is not None:
                self._traces.supersede(self.client, self._require_exp(), [old])
        cause = (r.cause or DEFAULT_CAUSE) if r.status == Status.CRASHED else None
        self._live[r.cell.id] = LiveCell(rid, r.status, cause)

    def _require_exp(self) -> str:
        if self.experiment_id is None:
            raise RuntimeError("MlflowTracker.start() must be called first")
        return self.experiment_id

    def _totals(self) -> dict[str, float]:
        statuses = Counter(live.status for live in self._live.values())
        causes = Counter(
            live.cause or DEFAULT_CAUSE for live in self._live.values() if live.status == Status.CRASHED
        )
        out = {
            Metrics.CELLS_TOTAL: float(len(self._cells)),
            Metrics.CELLS_FINISHED: float(statuses[Status.FINISHED]),
            Metrics.CELLS_CRASHED: float(statuses[Status.CRASHED]),
            Metrics.WALL_TIME_S: self._wall_prior + (time.monotonic() - self._t0),
        }
        out.update({Metrics.crashed(c): float(n) for c, n in causes.items()})
        return out

    def _log_progress(self, extra: dict[str, float] | None = None) -> None:
        from mlflow.entities import Metric

        now = records.millis()
        # Step = ms since the execution began: increases across resumed sessions, so the latest value wins.
        step = max(0, now - self._exec_start_ms)
        values = {**(extra or {}), **self._totals()}
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), BATCH_METRICS):
            self.client.log_batch(self._require_run(), metrics=metrics[i : i + BATCH_METRICS])

    # --------------------------------------------------------------------------------------- finish

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the execution: totals over every session, `pov.state`, and the run's status. The
        summary's other numbers (RunSummary.to_dict()) are recorded as `session.<name>`. After the server
        stopped answering (`log` raised RunAborted) there is nothing to close: the next run resumes."""
        pid = self._require_run()
        if self._aborted is not None:
            return
        with self._mid_run():
            self._finish(pid, summary)

    def _finish(self, pid: str, summary: dict[str, Any]) -> None:
        totals = self._totals()
        extra = {
            Metrics.session(k): float(v)
            for k, v in summary.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and k not in totals
            and not k.startswith(Metrics.CRASHED_PREFIX)
        }
        self._log_progress(extra)
        complete = all(cid in self._live for cid in self._cells)
        self.client.set_tag(pid, Tags.STATE, State.FINISHED if complete else State.INTERRUPTED)
        self.client.set_terminated(pid, "FINISHED" if complete else "KILLED")
