"""What `pov view` shows of each cell, as plain data: its axes, status, checks, timings and answer (cut into
the sections its template declares), and, for the opened cell, the prompt as sent and the three ranked
stages with rank moves between them, each POV chunk's similarity to every statement, and the chunks the
answer reused (word 8-grams shared with the answer, as the `copied` check counts them).

Read from what the tracker stored: the child runs (runner.report.load), their files (prompt.txt,
context.json, output.md, stderr.txt) and the execution's stored spec.yaml and templates, through
runner.tracking. A chunk's text is held once per page however many cells ranked it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from runner.errors import SpecError
from runner.report.load import CellRow, Execution
from runner.run import reused_spans, split_sections
from runner.spec import AXES, Section, parse_header
from runner.tracking import Artifacts, Metrics, Params, State, Tags, read_execution_files, read_run_files

if TYPE_CHECKING:
    from runner.tracking.client import MlflowClient

CELL_FILES = (Artifacts.PROMPT, Artifacts.CONTEXT, Artifacts.OUTPUT, Artifacts.STDERR)
PERF = (
    Metrics.LATENCY_S,
    Metrics.PROMPT_TOKENS,
    Metrics.COMPLEXITY_PROMPT_TOKENS,
    "new_tokens",
    Metrics.TOKENS_PER_S,
    Metrics.BATCH_SIZE,
)
"""The metrics a cell's card shows besides its checks (`check_*`, all of them)."""
STDERR_TAIL = 3000
"""Characters of a crash's stderr.txt a card keeps (the end: where the error is)."""


@dataclass
class StoredSpec:
    """What the page needs of the spec an execution ran: question texts, POV statements, sections."""

    questions: dict[str, str] = field(default_factory=dict)
    statements: dict[str, list[str]] = field(default_factory=dict)
    sections: dict[str, tuple[Section, ...]] = field(default_factory=dict)


def stored_spec(files: dict[str, str]) -> StoredSpec:
    """The stored spec.yaml (standalone: questions and POV sets inline) and templates/<name>.j2, read
    leniently: the page shows what it can of an execution whatever its spec holds."""
    out = StoredSpec()
    try:
        spec = yaml.safe_load(files.get(Artifacts.SPEC, "")) or {}
    except yaml.YAMLError:
        spec = {}
    questions = spec.get("questions") if isinstance(spec, dict) else None
    if isinstance(questions, list):
        out.questions = {
            str(q["id"]): str(q.get("text", "")) for q in questions if isinstance(q, dict) and "id" in q
        }
    pov_sets = spec.get("pov_sets") if isinstance(spec, dict) else None
    if isinstance(pov_sets, dict):
        out.statements = {str(k): [str(s) for s in v] for k, v in pov_sets.items() if isinstance(v, list)}
    prefix = Artifacts.TEMPLATES + "/"
    for rel, text in files.items():
        if rel.startswith(prefix) and rel.endswith(".j2"):
            name = rel[len(prefix) : -len(".j2")]
            try:
                out.sections[name] = parse_header(name, Path(rel), text, rel).sections
            except SpecError:
                out.sections[name] = ()
    return out


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _sections(answer: str, sections: tuple[Section, ...]) -> list[dict[str, Any]]:
    """The template's sections, each found in the answer or not (the page shows the answer as written)."""
    return [{"title": f.section.title, "present": f.present} for f in split_sections(answer, sections)]


def _stages(context: dict[str, Any], chunks: dict[str, str]) -> list[dict[str, Any]]:
    """The ranked stages, each chunk with its rank in the stage before; texts go to `chunks`, once."""
    out: list[dict[str, Any]] = []
    before: dict[str, int] = {}
    for stage in context.get("stages", []) if isinstance(context, dict) else []:
        ids, texts, scores = stage.get("ids", []), stage.get("texts", []), stage.get("scores", [])
        rows = []
        for r, (cid, text, score) in enumerate(zip(ids, texts, scores, strict=False), 1):
            chunks.setdefault(cid, text)
            rows.append({"id": cid, "score": score, "rank": r, "prev": before.get(cid) if out else None})
        entry: dict[str, Any] = {"name": stage.get("name", "?"), "k": len(rows), "chunks": rows}
        if stage.get("statements"):
            entry["statements"] = stage["statements"]
            entry["sims"] = stage.get("similarities", [])
        out.append(entry)
        before = {row["id"]: row["rank"] for row in rows}
    return out


def cell_view(
    row: CellRow, files: dict[str, str], spec: StoredSpec, chunks: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One cell: what its card shows, and what opening it shows (`chunks` collects the chunk texts)."""
    answer = files.get(Artifacts.OUTPUT)
    try:
        context = json.loads(files.get(Artifacts.CONTEXT, "{}"))
    except json.JSONDecodeError:
        context = {}
    metrics = {k: _finite(v) for k, v in row.metrics.items() if k.startswith("check_") or k in PERF}
    card: dict[str, Any] = {
        "id": row.cell_id,
        "run": row.run_id,
        "axes": {a: row.axes[a] for a in AXES},
        "repeat": row.params.get(Params.REPEAT, "0"),
        "status": row.status,
        "checks": row.checks,
        "metrics": metrics,
        "ranking": row.tags.get(Tags.RANKING_HASH, ""),
    }
    if row.crashed:
        card["cause"] = row.cause
        card["error"] = row.tags.get(Tags.ERROR, "")
        card["stderr"] = files.get(Artifacts.STDERR, "")[-STDERR_TAIL:]
    if answer is not None:
        card["answer"] = answer
        card["sections"] = _sections(answer, spec.sections.get(row.axes["template"], ()))
    stages = _stages(context, chunks)
    reused: dict[str, Any] = {}
    if answer and stages:
        for chunk in stages[-1]["chunks"]:  # the chunks the prompt held
            share, spans = reused_spans(answer, chunks[chunk["id"]])
            if share > 0:
                reused[chunk["id"]] = {"share": share, "spans": spans}
    detail = {"prompt": files.get(Artifacts.PROMPT, ""), "stages": stages, "reused": reused}
    return card, detail


def execution_view(
    ex: Execution, files: dict[str, dict[str, str]], spec: StoredSpec, chunks: dict[str, str]
) -> dict[str, Any]:
    """An execution as the page holds it: a header, one card per cell, and the details of each cell."""
    cards, details = [], {}
    for row in ex.cells:
        card, detail = cell_view(row, files.get(row.run_id, {}), spec, chunks)
        cards.append(card)
        details[row.cell_id] = detail
    state = ex.tags.get(Tags.STATE, "")
    total = ex.metrics.get(Metrics.CELLS_TOTAL)
    return {
        "run_id": ex.run_id,
        "label": ex.label,
        "spec_name": ex.tags.get(Tags.SPEC_NAME, ""),
        "state": state,
        "in_progress": state == State.RUNNING,
        "cells_total": int(total) if total is not None and math.isfinite(total) else None,
        "ignored": ex.ignored,
        "rerun_of": ex.tags.get(Tags.RERUN_OF),
        "questions": spec.questions,
        "statements": spec.statements,
        "sections": {name: [s.title for s in secs] for name, secs in spec.sections.items()},
        "cells": cards,
        "details": details,
    }


def load_views(
    client: MlflowClient, executions: list[Execution]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every execution's view, read from the store, and the chunk texts they share."""
    chunks: dict[str, str] = {}
    views = []
    for ex in executions:
        files = read_run_files(client, [(c.run_id, c.artifact_uri) for c in ex.cells], CELL_FILES)
        spec = stored_spec(read_execution_files(client, ex.run_id))
        views.append(execution_view(ex, files, spec, chunks))
    return views, chunks
