"""Per cell, before and after generation: the prompt from the retrieved context (and the cell's injected
fault), then the CellResult from the worker's JobResult, with retrieval scores, output checks and prompt
complexity added. runner.engine runs these around the executor."""

from __future__ import annotations

import hashlib
import logging
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.matrix import _matches
from runner.prompts import compile_template, context_text, render
from runner.results import CellResult

if TYPE_CHECKING:
    from runner.engine import RunSummary
    from runner.loader import Experiment
    from runner.matrix import Cell
    from runner.sinks import JsonlSink
    from runner.spec import Fault, Model
    from runner.tracking import Tracker
    from runner.workers import JobResult

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What the parent knows of a cell before it runs."""

    cell: Cell
    prompt: str
    context: dict[str, Any]
    context_texts: list[str]
    metrics: dict[str, float]
    variables: dict[str, Any] = field(default_factory=dict)
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


def optional(module: str, attr: str) -> Any:
    """A function from a module that may not exist yet (checks, complexity, manifest, retrieval)."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


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


def retrieval_keys(cells: Iterable[Cell]) -> list[tuple[str, str, tuple[int, int, int]]]:
    """Each (question, POV set, k schedule) once: what one batched `Retriever.retrieve` call needs."""
    return sorted({(c.question, c.pov_set, (c.k[0], c.k[1], c.k[2])) for c in cells})


def prepare(exp: Experiment, cells: list[Cell], retrieved: dict[Any, Any]) -> dict[str, Prepared]:
    """Render every cell's prompt from its retrieved context (`retrieved` is keyed as retrieval_keys)."""
    templates = {
        name: compile_template(info, str(info.path))
        for name, info in exp.templates.items()
        if name in {c.template for c in cells}
    }
    out: dict[str, Prepared] = {}
    for cell in cells:
        result = retrieved[(cell.question, cell.pov_set, tuple(cell.k))]
        chunks = list(result.final_chunks())
        variables = {
            "persona": exp.spec.personas[cell.persona],
            "question": exp.questions[cell.question].text,
            "question_id": cell.question,
            "context": context_text(chunks),
            "chunks": chunks,
            "pov_set": cell.pov_set,
            "pov_statements": exp.pov_sets[cell.pov_set],
        }
        prep = Prepared(
            cell,
            "",
            result.to_dict(),
            [str(c["text"]) for c in chunks],
            _stage_metrics(result),
            variables,
            fault_for(exp.spec.faults, cell),
        )
        try:
            prep.prompt = render(templates[cell.template], variables)
        except Exception as e:  # validated templates render; this guards against odd chunk text
            prep.error = f"prompt did not render: {type(e).__name__}: {e}"
        out[cell.id] = prep
    return out


class Collector:
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
        self.evaluate = optional("runner.checks", "evaluate")
        self.measure = optional("runner.complexity", "measure")
        self.count_tokens: Callable[[str], Callable[[str], int] | None] = lambda model: None
        self.causes: Counter[str] = Counter()
        self._complexity: dict[str, dict[str, float]] = {}

    def _measure(self, prep: Any) -> dict[str, float]:
        if self.measure is None or not prep.prompt:
            return {}
        try:
            v = prep.variables
            return dict(
                self.measure(
                    prep.prompt,
                    v["context"],
                    self.exp.templates[prep.cell.template],
                    v["persona"],
                    self.count_tokens(prep.cell.model),
                )
            )
        except Exception:
            log.exception("complexity.measure failed for cell %s", prep.cell.id)
            return {}

    def precompute(self) -> None:
        """Measure every prompt's complexity in a thread, while the workers generate, so that the last
        batch's results (which nothing else overlaps) need no tokenizing; a cell it has not reached yet
        is measured when its result arrives."""

        def work() -> None:
            for cell_id, prep in list(self.prepared.items()):
                if cell_id not in self._complexity:
                    self._complexity[cell_id] = self._measure(prep)

        threading.Thread(target=work, name="pov-complexity", daemon=True).start()

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
        measured = self._complexity.get(r.cell_id)
        metrics.update(measured if measured is not None else self._measure(prep))
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


def checks_embedder(retriever: Any) -> Callable[[list[str]], Any] | None:
    """The output checks' embedder: the reranker's (it scored the POV stage), through its cache."""
    reranker = getattr(retriever, "reranker", None)
    if reranker is not None and hasattr(reranker, "embed"):
        # One kind for answers, chunks and statements alike: the checks compare them with one another.
        return lambda texts: reranker.embed(texts, "document")
    embed = getattr(retriever, "embed", None)
    return embed if callable(embed) else None


def _tokenizer_file(model: Model) -> str | None:
    """The model's tokenizer.json: in its local folder, or in the Hugging Face cache (never downloaded)."""
    local = Path(model.name) / "tokenizer.json"
    if local.is_file():
        return str(local)
    if Path(model.name).is_dir():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model.name, "tokenizer.json", revision=model.revision)
    except Exception:
        return None
    return found if isinstance(found, str) else None


def token_counter(resolved: dict[str, Model]) -> Callable[[str], Callable[[str], int] | None]:
    """Per model key, a function counting a text's tokens with the model's tokenizer (None: count words).

    From tokenizer.json through the `tokenizers` library when the model has one: the same counts as its
    fast tokenizer in transformers, without importing transformers in this process (seconds, which would
    delay the first results). Else the tokenizer through transformers."""
    cache: dict[str, Callable[[str], int] | None] = {}

    def for_model(key: str) -> Callable[[str], int] | None:
        if key not in cache:
            cache[key] = _counter(resolved[key])
        return cache[key]

    return for_model


def _counter(model: Model) -> Callable[[str], int] | None:
    path = _tokenizer_file(model)
    if path is not None:
        try:
            from tokenizers import Tokenizer

            fast = Tokenizer.from_file(path)
            return lambda text: len(fast.encode(text, add_special_tokens=False).ids)
        except Exception:
            log.debug("tokenizers could not read %s; trying transformers", path, exc_info=True)
    try:
        from runner.backends.transformers import load_tokenizer

        tok = load_tokenizer(model)
        lock = threading.Lock()  # a transformers tokenizer changes its settings per call: one call at a time

        def count(text: str) -> int:
            with lock:
                return len(tok(text, add_special_tokens=False)["input_ids"])

        return count
    except Exception:
        return None  # a hub model not cached on this host: complexity counts words only
