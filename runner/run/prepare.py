"""Before generation, per cell: the prompt rendered from the retrieved context, the cell's injected fault
(testing only) and its retrieval scores. runner.run.engine runs this between retrieval and the executor."""

from __future__ import annotations

import hashlib
import logging
import statistics
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.spec import compile_template, context_text, display_path, matches, render

if TYPE_CHECKING:
    from runner.retrieval import Key, RetrievalResult
    from runner.spec import Cell, Experiment, Fault

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
    fault_above_tokens: int | None = None
    """The fault fires only in a batch of more prompt tokens than this (`Fault.above_batch_tokens`)."""
    error: str | None = None
    """Set when the prompt could not be made; the cell is recorded as crashed without running."""


def fault_for(faults: list[Fault], cell: Cell) -> str | None:
    """The first fault whose `match` fits the cell and whose `rate` picks it (a stable hash of the cell id)."""
    fault = picked_fault(faults, cell)
    return fault.cause if fault is not None else None


def picked_fault(faults: list[Fault], cell: Cell) -> Fault | None:
    """The fault `fault_for` names the cause of."""
    combo = {**cell.axes(), "k": tuple(cell.k)}
    for i, fault in enumerate(faults):
        if not matches(fault.match, combo):
            continue
        draw = int(hashlib.sha256(f"{cell.id}:{i}".encode()).hexdigest()[:8], 16) / 2**32
        if draw < fault.rate:
            return fault
    return None


def stage_metrics(context: Mapping[str, Any]) -> dict[str, float]:
    """The top score of each stage and the mean of the last, from a RetrievalResult.to_dict(), and the
    retrieval's own metrics (runner.retrieval.metrics: relevance kept, stance specificity, boilerplate and
    truncated chunks per stage) where the context holds them.

    The top is the highest score, not the first: a stage lists its chunks best first today, but the
    metric must not depend on that (the tracker once took the first and the report the highest)."""
    out: dict[str, float] = {
        str(k): float(v)
        for k, v in (context.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    stages = context.get("stages", [])
    for i, stage in enumerate(stages[:3], 1):
        scores = [float(s) for s in (stage.get("scores") or []) if isinstance(s, (int, float))]
        if scores:
            out[f"stage{i}_top_score"] = max(scores)
            if i == 3:
                out["stage3_mean_score"] = statistics.fmean(scores)
    return out


def retrieval_key(cell: Cell) -> Key:
    """What a cell retrieves with: (question, POV set, k schedule, POV score)."""
    return (cell.question, cell.pov_set, (cell.k[0], cell.k[1], cell.k[2]), cell.pov_score)


def retrieval_keys(cells: Iterable[Cell]) -> list[Key]:
    """Each retrieval key once: what one batched `Retriever.retrieve` call needs."""
    return sorted({retrieval_key(c) for c in cells})


def prepare(
    exp: Experiment, cells: list[Cell], retrieved: Mapping[Key, RetrievalResult]
) -> dict[str, Prepared]:
    """Render every cell's prompt from its retrieved context (`retrieved` is keyed as retrieval_keys)."""
    templates = {
        name: compile_template(info, str(info.path))
        for name, info in exp.templates.items()
        if name in {c.template for c in cells}
    }
    out: dict[str, Prepared] = {}
    for cell in cells:
        result = retrieved[retrieval_key(cell)]
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
        context = result.to_dict()
        fault = picked_fault(exp.spec.faults, cell)
        prep = Prepared(
            cell,
            "",
            context,
            [str(c["text"]) for c in chunks],
            stage_metrics(context),
            variables,
            fault.cause if fault else None,
            fault.above_batch_tokens if fault else None,
        )
        try:
            prep.prompt = render(templates[cell.template], variables)
        except Exception as e:
            # Validated templates render with sample values, but a cell's own chunks can still make one fail
            # or go over its render budget: that cell is crashed, the run goes on.
            where = _template_line(e, display_path(exp.templates[cell.template].path))
            prep.error = f"prompt did not render ({where}): {type(e).__name__}: {e}"
        out[cell.id] = prep
    return out


def _template_line(e: BaseException, path: str) -> str:
    """`path:line` of the innermost template line in the error's traceback (Jinja rewrites those frames)."""
    lines = [
        f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == "<template>" and f.lineno
    ]
    return f"{path}:{lines[-1] if lines else 1}"
