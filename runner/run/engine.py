"""`run_experiment`: retrieval → prompts → executor → CellResult → results file and tracker.

The parent process is the only writer: workers return JobResults, runner.run.collect turns them into
CellResults (adding retrieval scores, output checks and prompt complexity) and writes each batch to the
run directory's results.jsonl and then to the tracker. The engine sees its collaborators only through
their protocols: `Tracker` (runner.run.tracker), `Retriever` (runner.retrieval) and `Executor`
(runner.generation.executors).

One process runs an execution at a time (runner.run.lock), and whatever can fail before a cell runs (the
executor, the corpus index, the services behind it) is tried before the tracker opens the execution, so
such a failure leaves nothing behind.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from runner.errors import RunAborted
from runner.generation import Job, JobResult, make_executor, model_revision, resolve_model
from runner.retrieval import open_retriever
from runner.run.collect import ResultCollector
from runner.run.lock import execution_lock
from runner.run.manifest import build_manifest
from runner.run.prepare import Prepared, prepare, retrieval_keys
from runner.run.sinks import JsonlSink, run_dir
from runner.run.summary import RunSummary
from runner.run.tokens import token_counter
from runner.spec import repeat_seed

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from runner.generation import Executor, Groups
    from runner.retrieval import Retriever
    from runner.run.tracker import Tracker
    from runner.spec import Cell, Experiment, Model

log = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; its message says what is recorded and how to go on (the CLI prints it)."""


@contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.monotonic() - started


@contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Hold Ctrl-C back until the body is done, so that it never cuts a batch's record in two (written to
    results.jsonl but not to the tracker): the cells it reports as recorded are recorded everywhere."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if caught:  # pressed again: the user means it, even while the tracker hangs
            raise KeyboardInterrupt
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def job_for(exp: Experiment, prep: Prepared) -> Job:
    """A prepared cell as its worker gets it: the prompt, its injected fault, and a repeat's own seed."""
    cell = prep.cell
    seed = repeat_seed(exp.spec.generation.seed, cell.repeat) if cell.repeat else None
    return Job(cell.id, prep.prompt, prep.fault, prep.fault_above_tokens, seed)


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
    limit: int | None = None,
) -> RunSummary:
    """Run the cells not already recorded (per the tracker), at most `limit` of them; return what happened.

    `cells` are all the execution's cells whatever `limit` says: they make its identity in the tracker, and
    a later run continues with the ones left. Raises UserError, having written nothing, when another
    process runs this spec's execution or when the executor or the corpus index cannot work."""
    from rich.console import Console

    started = time.monotonic()
    cells = list(cells)
    console = console or Console(stderr=True, quiet=quiet)
    phases: dict[str, float] = {}
    with execution_lock(exp):
        try:
            tracker.check()
            with _timed(phases, "manifest"):
                manifest = build_manifest(exp)
            if executor is None:
                executor = make_executor(exp.spec, state_dir=exp.state_dir)
            executor.check()
            if retriever is None:  # ingests first: Chroma, the embedder and Cohere answer now or never
                with console.status("bringing the corpus index up to date"), _timed(phases, "retrieval"):
                    retriever = open_retriever(exp)
            skip = tracker.start(exp, cells, manifest, fresh=fresh, retry_crashed=retry_crashed)
        except KeyboardInterrupt as e:
            raise RunInterrupted("interrupted before any cell ran: run the same command to start") from e
        pending = [c for c in cells if c.id not in skip]
        todo = pending[:limit] if limit is not None else pending
        run_id = tracker.run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        sink = JsonlSink(run_dir(exp, str(run_id)))
        summary = RunSummary(
            exp.spec.name,
            str(run_id),
            sink.dir,
            sink.path,
            len(cells),
            cells_skipped=len(cells) - len(pending),
            cells_deferred=len(pending) - len(todo),
        )
        summary.phases = phases
        close = _closer(exp, sink, tracker, summary, started)
        try:
            if todo:
                _run(exp, todo, tracker, executor, console, retriever, sink, summary, quiet, manifest)
            summary.state = "finished"
        except BaseException as e:
            summary.state = "interrupted"
            close(failing=True)
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, RunInterrupted):
                raise RunInterrupted(summary.interrupted_message(tracker.run_id is not None)) from e
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                raise RunAborted(
                    f"cannot write {e.filename or 'the results'}: {e.strerror} (disk full?); "
                    f"{summary.cells_skipped + summary.cells_run} of {summary.cells_total} cells recorded: "
                    "free some space, then run the same command to resume"
                ) from e
            raise
        close(failing=False)
        return summary


def _closer(
    exp: Experiment, sink: JsonlSink, tracker: Tracker, summary: RunSummary, started: float
) -> Callable[..., None]:
    """The run's last writes: summary.json, then the tracker's close. While an error is on its way out they
    must not replace it (a full disk fails them too), so their own failures are only logged then."""

    def close(*, failing: bool) -> None:
        summary.wall_time_s = time.monotonic() - started
        record = summary.to_dict()
        target = sink.dir / "summary.json"
        unwritten: OSError | None = None
        try:
            sink.finish(
                {"spec_name": exp.spec.name, "spec_hash": exp.spec_hash, "run_id": summary.run_id, **record}
            )
        except OSError as e:
            log.warning("could not write %s: %s", target, e)
            unwritten = e
        try:
            tracker.finish(record)
        except Exception as e:
            if not failing:
                raise
            log.warning("could not close the execution in the tracker: %s", e)
        if unwritten is not None and not failing:
            raise RunAborted(
                f"cannot write {target}: {unwritten.strerror or unwritten} (disk full?); every cell's result "
                f"is in {sink.path}" + (" and in the tracker" if tracker.run_id is not None else "")
            ) from unwritten

    return close


def _run(
    exp: Experiment,
    todo: list[Cell],
    tracker: Tracker,
    executor: Executor,
    console: Console,
    retriever: Retriever,
    sink: JsonlSink,
    summary: RunSummary,
    quiet: bool,
    manifest: dict[str, Any],
) -> None:
    phases = summary.phases
    models = {key: exp.spec.models[key] for key in sorted({c.model for c in todo})}
    with console.status("preparing models"), _timed(phases, "models"):
        resolved = {key: resolve_model(exp, m) for key, m in models.items()}
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
                retrieved = retriever.retrieve(retrieval_keys(todo))
            with _timed(phases, "prompts"):
                prepared = prepare(exp, todo, retrieved)
        groups: Groups = {key: (m, []) for key, m in resolved.items()}
        unrenderable = []
        for prep in prepared.values():
            if prep.error:
                unrenderable.append(JobResult(prep.cell.id, "crashed", cause="exception", error=prep.error))
            else:
                groups[prep.cell.model][1].append(job_for(exp, prep))
        with _progress(console, quiet) as progress:
            task = progress.add_task("generating", total=len(todo))
            collect = ResultCollector(
                exp, prepared, tracker, sink, summary, model_tags, retriever.check_embedder(), progress, task
            )
            collect.count_tokens = token_counter(resolved)
            collect.precompute()

            def on_result(results: list[JobResult]) -> None:
                with _ctrl_c_after():
                    collect(results)
                    summary.note_crashes(results)

            if unrenderable:
                on_result(unrenderable)
            with _timed(phases, "generation"):
                executor.run(groups, exp.spec.generation, on_result)
    except BaseException:
        executor.shutdown()  # workers begun for this run must not outlive it
        raise
