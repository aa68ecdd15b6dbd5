"""`run_experiment`: retrieval (cached) → prompts → executor → CellResult → tracker and results file.

The parent process is the only writer: workers return JobResults, runner.assembly turns them into
CellResults (adding retrieval scores, output checks and prompt complexity), and this module logs them to
the tracker in batches and appends them to the run directory's results.jsonl.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.assembly import (
    Collector,
    checks_embedder,
    optional,
    prepare,
    retrieval_keys,
    token_counter,
)
from runner.sinks import JsonlSink, run_dir
from runner.workers import Job, JobResult

if TYPE_CHECKING:
    from rich.console import Console

    from runner.loader import Experiment
    from runner.matrix import Cell
    from runner.spec import Model
    from runner.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    spec_name: str
    run_id: str
    run_dir: Path
    results_path: Path
    cells_total: int
    cells_skipped: int = 0
    finished: int = 0
    crashed: int = 0
    crashed_by_cause: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0
    generate_time_s: float = 0.0
    """Time spent inside the backends' generate calls (each batch counted once)."""
    state: str = "running"
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each step: manifest, models, retrieval, prompts, generation (which includes the
    workers' start and model load)."""

    @property
    def cells_run(self) -> int:
        return self.finished + self.crashed

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cells_total": self.cells_total,
            "cells_skipped": self.cells_skipped,
            "cells_run": self.cells_run,
            "cells_finished": self.finished,
            "cells_crashed": self.crashed,
            "wall_time_s": self.wall_time_s,
            "generate_time_s": self.generate_time_s,
            "state": self.state,
            "results_path": str(self.results_path),
        }
        out.update({f"crashed.{cause}": n for cause, n in sorted(self.crashed_by_cause.items())})
        out.update({f"phase.{name}_s": secs for name, secs in self.phases.items()})
        return out


def model_revision(model: Model) -> str:
    """Hash of a local model folder's files, else the pinned hub revision, else the commit in the hub cache."""
    from runner.backends.base import local_revision

    local = local_revision(model.name)
    if local:
        return local
    if model.revision:
        return model.revision
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{model.name.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() if ref.exists() else "unpinned"
    except Exception:
        return "unpinned"


@contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.monotonic() - started


def _revision(info: Any, model: Model) -> str:
    """The manifest's hash of the model's files when it has one (the tracker records the same value, and
    a large model is not hashed twice), else our own."""
    if isinstance(info, dict):
        for key in ("files_hash", "resolved_revision"):
            if info.get(key):
                return str(info[key])
    return model_revision(model)


def _manifest(exp: Experiment) -> dict[str, Any]:
    build_manifest = optional("runner.manifest", "build_manifest")
    if build_manifest is None:
        return {}
    try:
        return dict(build_manifest(exp))
    except ImportError:
        log.exception("the run manifest needs a package missing here; recording the run without it")
        return {}


def _default_retriever(exp: Experiment) -> Any:
    """The real retriever, over a collection brought up to date first: ingest is idempotent (an unchanged
    corpus writes nothing), and a run must never retrieve from chunks of files edited since."""
    from runner.retrieval import Retriever

    ingest = optional("runner.store", "ingest")
    if ingest is not None:
        ingest(exp)
    return Retriever(exp)


def _progress(console: Console | None, quiet: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def run_experiment(
    exp: Experiment,
    cells: Iterable[Cell],
    tracker: Tracker,
    executor: Any = None,
    console: Console | None = None,
    retriever: Any = None,
    *,
    fresh: bool = False,
    retry_crashed: bool = False,
    quiet: bool = False,
) -> RunSummary:
    """Run every cell not already done (per the tracker); return what happened."""
    from rich.console import Console

    started = time.monotonic()
    cells = list(cells)
    console = console or Console(stderr=True, quiet=quiet)
    phases: dict[str, float] = {}
    with _timed(phases, "manifest"):
        manifest = _manifest(exp)
    skip = set(tracker.start(exp, cells, manifest, fresh=fresh, retry_crashed=retry_crashed) or ())
    todo = [c for c in cells if c.id not in skip]
    run_id = getattr(tracker, "run_id", None) or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    sink = JsonlSink(run_dir(exp, str(run_id)))
    summary = RunSummary(exp.spec.name, str(run_id), sink.dir, sink.path, len(cells), len(cells) - len(todo))
    summary.phases = phases
    try:
        if todo:
            _run(exp, todo, tracker, executor, console, retriever, sink, summary, quiet, manifest)
        summary.state = "finished"
    finally:
        if summary.state != "finished":
            summary.state = "interrupted"
        summary.wall_time_s = time.monotonic() - started
        sink.finish(
            {"spec_name": exp.spec.name, "spec_hash": exp.spec_hash, "run_id": run_id, **summary.to_dict()}
        )
        tracker.finish(summary.to_dict())
    return summary


def _run(
    exp: Experiment,
    todo: list[Cell],
    tracker: Tracker,
    executor: Any,
    console: Console,
    retriever: Any,
    sink: JsonlSink,
    summary: RunSummary,
    quiet: bool,
    manifest: dict[str, Any],
) -> None:
    from runner import tinymodel

    phases = summary.phases
    models = {key: exp.spec.models[key] for key in sorted({c.model for c in todo})}
    with console.status("preparing models"), _timed(phases, "models"):
        resolved = {key: tinymodel.resolve_model(exp, m) for key, m in models.items()}
        if executor is None:
            from runner.executors import make_executor

            executor = make_executor(exp.spec, state_dir=exp.state_dir)
        describe = getattr(executor, "describe", None)
        if describe is not None:
            console.print(f"generation: {describe()}")
        if getattr(executor, "log_dir", False) is None:
            executor.log_dir = sink.dir / "workers"
    try:
        prestart = getattr(executor, "prestart", None)
        if prestart is not None:
            # Workers import and load their models while this process retrieves and renders prompts.
            prestart(resolved)
        with _timed(phases, "models"):
            known = manifest.get("models", {}) if isinstance(manifest.get("models"), dict) else {}
            model_tags = {
                key: {"model_name": exp.spec.models[key].name, "model_revision": _revision(known.get(key), m)}
                for key, m in resolved.items()
            }
        with console.status(f"retrieving context for {len(todo)} cells"):
            with _timed(phases, "retrieval"):
                retriever = retriever if retriever is not None else _default_retriever(exp)
                retrieved = retriever.retrieve(retrieval_keys(todo))
            with _timed(phases, "prompts"):
                prepared = prepare(exp, todo, retrieved)
        groups: dict[str, tuple[Model, list[Job]]] = {key: (m, []) for key, m in resolved.items()}
        unrenderable = []
        for prep in prepared.values():
            if prep.error:
                unrenderable.append(JobResult(prep.cell.id, "crashed", cause="exception", error=prep.error))
            else:
                groups[prep.cell.model][1].append(Job(prep.cell.id, prep.prompt, prep.fault))
        with _progress(console, quiet) as progress:
            task = progress.add_task("generating", total=len(todo))
            collect = Collector(
                exp, prepared, tracker, sink, summary, model_tags, checks_embedder(retriever), progress, task
            )
            collect.count_tokens = token_counter(resolved)
            collect.precompute()
            if unrenderable:
                collect(unrenderable)
            with _timed(phases, "generation"):
                executor.run(groups, exp.spec.generation, collect)
    except BaseException:
        shutdown = getattr(executor, "shutdown", None)
        if shutdown is not None:  # workers begun for this run must not outlive it
            shutdown()
        raise
