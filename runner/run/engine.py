"""`run_experiment`: retrieval → prompts → executor → CellResult → results file and tracker.

The parent process is the only writer: workers return JobResults, runner.run.collect turns them into
CellResults (adding retrieval scores, output checks and prompt complexity) and writes each batch to the
run directory's results.jsonl and then to the tracker. The engine sees its collaborators only through
their protocols: `Tracker` (runner.run.tracker), `Retriever` (runner.retrieval) and `Executor`
(runner.generation.executors).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from runner.generation import Job, JobResult, make_executor, model_revision, resolve_model
from runner.retrieval import open_retriever
from runner.run.collect import ResultCollector
from runner.run.manifest import build_manifest
from runner.run.prepare import prepare, retrieval_keys
from runner.run.sinks import JsonlSink, run_dir
from runner.run.summary import RunSummary
from runner.run.tokens import token_counter

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from runner.generation import Executor, Groups
    from runner.retrieval import Retriever
    from runner.run.tracker import Tracker
    from runner.spec import Cell, Experiment, Model

log = logging.getLogger(__name__)


@contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.monotonic() - started


def _revision(info: Any, model: Model, state_dir: Any) -> str:
    """The manifest's hash of the model's files when it has one (the tracker records the same value, and
    a large model is not hashed twice), else our own."""
    if isinstance(info, dict):
        for key in ("files_hash", "resolved_revision"):
            if info.get(key):
                return str(info[key])
    return model_revision(model, state_dir)


def _progress(console: Console | None, quiet: bool) -> Progress:
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
    executor: Executor | None = None,
    console: Console | None = None,
    retriever: Retriever | None = None,
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
        manifest = build_manifest(exp)
    skip = tracker.start(exp, cells, manifest, fresh=fresh, retry_crashed=retry_crashed)
    todo = [c for c in cells if c.id not in skip]
    run_id = tracker.run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
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
    executor: Executor | None,
    console: Console,
    retriever: Retriever | None,
    sink: JsonlSink,
    summary: RunSummary,
    quiet: bool,
    manifest: dict[str, Any],
) -> None:
    phases = summary.phases
    models = {key: exp.spec.models[key] for key in sorted({c.model for c in todo})}
    with console.status("preparing models"), _timed(phases, "models"):
        resolved = {key: resolve_model(exp, m) for key, m in models.items()}
        if executor is None:
            executor = make_executor(exp.spec, state_dir=exp.state_dir)
        console.print(f"generation: {executor.describe()}")
    try:
        # Workers import and load their models while this process retrieves and renders prompts.
        executor.prestart(resolved, sink.dir / "workers")
        with _timed(phases, "models"):
            known = manifest.get("models", {}) if isinstance(manifest.get("models"), dict) else {}
            model_tags = {
                key: {
                    "model_name": exp.spec.models[key].name,
                    "model_revision": _revision(known.get(key), m, exp.state_dir),
                }
                for key, m in resolved.items()
            }
        with console.status(f"retrieving context for {len(todo)} cells"):
            with _timed(phases, "retrieval"):
                retriever = retriever if retriever is not None else open_retriever(exp)
                retrieved = retriever.retrieve(retrieval_keys(todo))
            with _timed(phases, "prompts"):
                prepared = prepare(exp, todo, retrieved)
        groups: Groups = {key: (m, []) for key, m in resolved.items()}
        unrenderable = []
        for prep in prepared.values():
            if prep.error:
                unrenderable.append(JobResult(prep.cell.id, "crashed", cause="exception", error=prep.error))
            else:
                groups[prep.cell.model][1].append(Job(prep.cell.id, prep.prompt, prep.fault))
        with _progress(console, quiet) as progress:
            task = progress.add_task("generating", total=len(todo))
            collect = ResultCollector(
                exp, prepared, tracker, sink, summary, model_tags, retriever.check_embedder(), progress, task
            )
            collect.count_tokens = token_counter(resolved)
            collect.precompute()
            if unrenderable:
                collect(unrenderable)
            with _timed(phases, "generation"):
                executor.run(groups, exp.spec.generation, collect)
    except BaseException:
        executor.shutdown()  # workers begun for this run must not outlive it
        raise
