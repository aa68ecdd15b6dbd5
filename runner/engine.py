"""`run_experiment`: retrieval (cached) → prompts → executor → CellResult → tracker and results file.

The parent process is the only writer: workers return JobResults, and this module turns them into
CellResults (adding retrieval scores, output checks and prompt complexity), logs them to the tracker in
batches, and appends them to the run directory's results.jsonl.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.matrix import _matches
from runner.prompts import compile_template, context_text, render
from runner.results import CellResult
from runner.sinks import JsonlSink, run_dir
from runner.workers import Job, JobResult

if TYPE_CHECKING:
    from rich.console import Console

    from runner.loader import Experiment
    from runner.matrix import Cell
    from runner.spec import Fault, Model
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
        return out


@dataclass
class Prepared:
    """What the parent knows of a cell before it runs."""

    cell: Cell
    prompt: str
    context: dict[str, Any]
    context_texts: list[str]
    metrics: dict[str, float]
    fault: str | None = None
    error: str | None = None
    """Set when the prompt could not be made; the cell is recorded as crashed without running."""


def fault_for(faults: list[Fault], cell: Cell) -> str | None:
    """The first fault whose `match` fits the cell and whose `rate` picks it (a stable hash of the cell id)."""
    combo = {
        "model": cell.model,
        "template": cell.template,
        "persona": cell.persona,
        "pov_set": cell.pov_set,
        "k": tuple(cell.k),
        "question": cell.question,
    }
    for i, fault in enumerate(faults):
        if not _matches(fault.match, combo):
            continue
        draw = int(hashlib.sha256(f"{cell.id}:{i}".encode()).hexdigest()[:8], 16) / 2**32
        if draw < fault.rate:
            return fault.cause
    return None


def _optional(module: str, attr: str) -> Any:
    """A function from a module that may not exist yet (checks, complexity, manifest, retrieval)."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


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


def _stage_metrics(result: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    stages = list(getattr(result, "stages", []) or [])
    for i, stage in enumerate(stages[:3], 1):
        scores = list(getattr(stage, "scores", []) or [])
        if scores:
            out[f"stage{i}_top_score"] = float(scores[0])
        if i == 3 and scores:
            out["stage3_mean_score"] = float(statistics.fmean(scores))
    return out


def prepare(
    exp: Experiment,
    cells: list[Cell],
    retriever: Any,
    count_tokens: Callable[[str], Callable[[str], int] | None] | None = None,
) -> dict[str, Prepared]:
    """Retrieve the context of every cell (one batched call) and render its prompt."""
    keys = sorted({(c.question, c.pov_set, tuple(c.k)) for c in cells})
    retrieved = retriever.retrieve(keys)
    templates = {
        name: compile_template(info, str(info.path))
        for name, info in exp.templates.items()
        if name in {c.template for c in cells}
    }
    measure = _optional("runner.complexity", "measure")
    out: dict[str, Prepared] = {}
    for cell in cells:
        result = retrieved[(cell.question, cell.pov_set, tuple(cell.k))]
        chunks = list(result.final_chunks())
        texts = [str(c["text"]) for c in chunks]
        persona = exp.spec.personas[cell.persona]
        variables = {
            "persona": persona,
            "question": exp.questions[cell.question].text,
            "question_id": cell.question,
            "context": context_text(chunks),
            "chunks": chunks,
            "pov_set": cell.pov_set,
            "pov_statements": exp.pov_sets[cell.pov_set],
        }
        prep = Prepared(
            cell, "", result.to_dict(), texts, _stage_metrics(result), fault_for(exp.spec.faults, cell)
        )
        try:
            prep.prompt = render(templates[cell.template], variables)
        except Exception as e:  # validated templates render; this guards against odd chunk text
            prep.error = f"prompt did not render: {type(e).__name__}: {e}"
        if measure is not None and prep.prompt:
            try:
                counter = count_tokens(cell.model) if count_tokens else None
                prep.metrics.update(
                    measure(prep.prompt, variables["context"], exp.templates[cell.template], persona, counter)
                )
            except Exception:
                log.exception("complexity.measure failed for cell %s", cell.id)
        out[cell.id] = prep
    return out


class _Collector:
    """Receives the executor's JobResults and writes CellResults to the tracker and the results file."""

    def __init__(
        self,
        exp: Experiment,
        prepared: dict[str, Prepared],
        tracker: Tracker,
        sink: JsonlSink,
        summary: RunSummary,
        model_tags: dict[str, dict[str, str]],
        embed: Any,
        progress: Any = None,
        task: Any = None,
    ) -> None:
        self.exp, self.prepared, self.tracker, self.sink = exp, prepared, tracker, sink
        self.summary, self.model_tags, self.embed = summary, model_tags, embed
        self.progress, self.task = progress, task
        self.evaluate = _optional("runner.checks", "evaluate")
        self.causes: Counter[str] = Counter()

    def __call__(self, results: list[JobResult]) -> None:
        cell_results = [self.cell_result(r) for r in results]
        # The results file first: it is the record that survives whatever happens to the tracker.
        self.sink.write(cell_results)
        for r in cell_results:
            if r.status == "finished":
                self.summary.finished += 1
                # Every cell of a batch carries the batch's latency; sharing it out counts each batch once.
                self.summary.generate_time_s += r.metrics.get("latency_s", 0.0) / max(
                    r.metrics.get("batch_size", 1.0), 1.0
                )
            else:
                self.summary.crashed += 1
                self.causes[r.cause or "exception"] += 1
        self.summary.crashed_by_cause = dict(self.causes)
        self.tracker.log(cell_results)
        if self.progress is not None:
            crashed = f" [red]{self.summary.crashed} crashed[/red]" if self.summary.crashed else ""
            self.progress.update(self.task, advance=len(cell_results), description=f"generating{crashed}")

    def cell_result(self, r: JobResult) -> CellResult:
        prep = self.prepared[r.cell_id]
        now = time.time()
        metrics = {**prep.metrics, **r.metrics}
        tags = dict(self.model_tags.get(prep.cell.model, {}))
        if self.evaluate is not None:
            try:
                m, t = self.evaluate(
                    r.output if r.status == "finished" else None,
                    self.exp.templates[prep.cell.template],
                    prep.context_texts,
                    self.exp.pov_sets[prep.cell.pov_set],
                    self.exp.spec.checks,
                    self.embed,
                )
                metrics.update(m)
                tags.update(t)
            except Exception:
                log.exception("checks.evaluate failed for cell %s", r.cell_id)
        return CellResult(
            cell=prep.cell,
            status="finished" if r.status == "finished" else "crashed",
            prompt=prep.prompt,
            context=prep.context,
            output=r.output,
            cause=r.cause,
            error=r.error,
            stderr_tail=r.stderr_tail,
            metrics=metrics,
            tags=tags,
            started_at=r.started_at or now,
            ended_at=r.ended_at or now,
        )


def _embed_fn(retriever: Any) -> Callable[[list[str]], Any] | None:
    """The output checks' embedder: the reranker's (it scored the POV stage), through its cache."""
    reranker = getattr(retriever, "reranker", None)
    if reranker is not None and hasattr(reranker, "embed"):
        # One kind for answers, chunks and statements alike: the checks compare them with one another.
        return lambda texts: reranker.embed(texts, "document")
    embed = getattr(retriever, "embed", None)
    return embed if callable(embed) else None


def _manifest(exp: Experiment) -> dict[str, Any]:
    build_manifest = _optional("runner.manifest", "build_manifest")
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

    ingest = _optional("runner.store", "ingest")
    if ingest is not None:
        ingest(exp)
    return Retriever(exp)


def _token_counter(resolved: dict[str, Model]) -> Callable[[str], Callable[[str], int] | None]:
    cache: dict[str, Callable[[str], int] | None] = {}

    def for_model(key: str) -> Callable[[str], int] | None:
        if key not in cache:
            try:
                from runner.backends.transformers import load_tokenizer

                tok = load_tokenizer(resolved[key])
                cache[key] = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
            except Exception:
                cache[key] = None  # a hub model not cached on this host: complexity counts words only
        return cache[key]

    return for_model


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
    manifest = _manifest(exp)
    skip = set(tracker.start(exp, cells, manifest, fresh=fresh, retry_crashed=retry_crashed) or ())
    todo = [c for c in cells if c.id not in skip]
    run_id = getattr(tracker, "run_id", None) or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    sink = JsonlSink(run_dir(exp, str(run_id)))
    summary = RunSummary(exp.spec.name, str(run_id), sink.dir, sink.path, len(cells), len(cells) - len(todo))
    try:
        if todo:
            _run(exp, todo, tracker, executor, console, retriever, sink, summary, quiet)
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
) -> None:
    from runner import tinymodel

    models = {key: exp.spec.models[key] for key in sorted({c.model for c in todo})}
    with console.status("preparing models"):
        resolved = {key: tinymodel.resolve_model(exp, m) for key, m in models.items()}
        model_tags = {
            key: {"model_name": models[key].name, "model_revision": model_revision(m)}
            for key, m in resolved.items()
        }
    with console.status(f"retrieving context for {len(todo)} cells"):
        retriever = retriever if retriever is not None else _default_retriever(exp)
        prepared = prepare(exp, todo, retriever, _token_counter(resolved))
    groups: dict[str, tuple[Model, list[Job]]] = {key: (m, []) for key, m in resolved.items()}
    unrenderable = []
    for prep in prepared.values():
        if prep.error:
            unrenderable.append(JobResult(prep.cell.id, "crashed", cause="exception", error=prep.error))
        else:
            groups[prep.cell.model][1].append(Job(prep.cell.id, prep.prompt, prep.fault))
    if executor is None:
        from runner.executors import make_executor

        executor = make_executor(exp.spec)
    if getattr(executor, "log_dir", False) is None:
        executor.log_dir = sink.dir / "workers"
    with _progress(console, quiet) as progress:
        task = progress.add_task("generating", total=len(todo))
        collect = _Collector(
            exp, prepared, tracker, sink, summary, model_tags, _embed_fn(retriever), progress, task
        )
        if unrenderable:
            collect(unrenderable)
        executor.run(groups, exp.spec.generation, collect)
