"""`pov audit RUN_ID`: does a recorded answer depend on the batch it was generated in?

Greedy answers can change with the prompts a prompt shares its batch with (padding, kernels), and cells are
batched by prompt length, so adding a persona can change which prompts share a batch, and with it, silently,
the answer of a cell whose id did not change. An audit takes a sample of an execution's finished cells,
generates each again from its stored prompt alone (batch 1, or `batch_size` of the sample's own), with the
execution's stored spec (runner.tracking.reproduce loads it), and compares each answer with the recorded
one: identical, or changed with a word diff.

What it records: each audited cell's child run gets `pov.batch_sensitive` (`true` when its answer changed),
which the report flags, and the execution gets `audit/<time>.json` with every finding. Nothing else is
written; the execution itself is not changed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError
from runner.redaction import redact, secret_values
from runner.tracking.client import make_client
from runner.tracking.reproduce import prepare
from runner.tracking.resume import children, triage
from runner.tracking.schema import FALSE, TRUE, Artifacts, Metrics, Status, Tags

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlflow.tracking import MlflowClient

    from runner.generation import JobResult
    from runner.spec import Cell

IDENTICAL, CHANGED, CRASHED = "identical", "changed", "crashed"
"""A sampled cell's verdict: the same answer again, another answer, or no answer (the rerun crashed)."""
CONTEXT_WORDS = 6
"""Unchanged words kept on each side of a change in a word diff; longer unchanged runs are elided."""


@dataclass
class AuditedCell:
    cell_id: str
    template: str
    question: str
    batch_size: int
    """The size of the batch the recorded answer came from."""
    verdict: str
    recorded: str
    rerun: str | None
    diff: str = ""
    """`[-removed-] {+added+}` between the recorded answer and the rerun's, words elided around changes."""
    error: str | None = None


@dataclass
class AuditOutcome:
    run_id: str
    batch_size: int
    """The batch size the sample ran with."""
    finished: int
    """Finished cells in the execution (the sample is drawn from these)."""
    cells: list[AuditedCell] = field(default_factory=list)
    drifts: list[str] = field(default_factory=list)
    artifact: str | None = None

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.cells if c.verdict == verdict)


def word_diff(before: str, after: str, context: int = CONTEXT_WORDS) -> str:
    """The changes between two texts word by word: `[-old words-]` and `{+new words+}`, with at most
    `context` unchanged words kept on each side of a change; empty when the words are the same."""
    a, b = before.split(), after.split()
    out: list[str] = []
    opcodes = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    if all(op == "equal" for op, *_ in opcodes):
        return ""
    for n, (op, i1, i2, j1, j2) in enumerate(opcodes):
        if op == "equal":
            same = a[i1:i2]
            head = same[:context] if n > 0 else []
            tail = same[-context:] if n < len(opcodes) - 1 else []
            if len(same) <= len(head) + len(tail):
                out += same
            else:
                out += [*head, "…", *tail]
            continue
        if op in ("delete", "replace"):
            out.append("[-" + " ".join(a[i1:i2]) + "-]")
        if op in ("insert", "replace"):
            out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(w for w in out if w)


def pick_sample(cell_ids: list[str], n: int | None, seed: int) -> list[str]:
    """`n` of the ids (all when None), chosen by a hash of the seed and the id: the same audit samples the
    same cells, and a larger sample holds a smaller one."""
    ranked = sorted(cell_ids, key=lambda cid: hashlib.sha256(f"{seed}:{cid}".encode()).hexdigest())
    return ranked if n is None else ranked[:n]


def _artifact_text(client: MlflowClient, run_id: str, name: str, scratch: Path) -> str:
    local = client.download_artifacts(run_id, name, str(scratch))
    return Path(local).read_text(encoding="utf-8")


def audit(
    run_id: str,
    *,
    sample: int | None = 10,
    batch_size: int = 1,
    seed: int = 0,
    tracking_uri: str | None = None,
    record: bool = True,
    say: Callable[[str], None] = print,
) -> AuditOutcome:
    """Generate a sample of execution `run_id`'s finished cells again, in batches of `batch_size` (1: each
    alone), and compare each answer with the recorded one; `say` gets progress lines."""
    from runner.generation import Job, make_executor, resolve_model
    from runner.spec import repeat_seed

    plan = prepare(run_id, tracking_uri)
    exp = plan.exp
    client = make_client(plan.tracking_uri)
    live, _ = triage(children(client, plan.experiment_id, plan.run_id), {c.id for c in plan.cells})
    finished = sorted(cid for cid, cell in live.items() if cell.status == Status.FINISHED)
    if not finished:
        raise UserError(f"pov audit: execution {plan.run_id} has no finished cells to audit")
    cells: dict[str, Cell] = {c.id: c for c in plan.cells}
    picked = pick_sample(finished, sample, seed)
    outcome = AuditOutcome(plan.run_id, batch_size, len(finished), drifts=[str(d) for d in plan.drifts])
    for drift in outcome.drifts:
        say(f"drift since the run (answers may change for this reason too): {drift}")
    if exp.spec.generation.temperature > 0:
        say(
            "note: this execution samples (temperature > 0), and a batch draws one random stream for all its "
            "rows: an answer alone draws other numbers, so a change says little about padding or kernels"
        )
    say(
        f"auditing {len(picked)} of {len(finished)} finished cells of {plan.run_name}, in batches of {batch_size}"
    )
    recorded: dict[str, tuple[str, str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="pov-audit-") as tmp:
        for cid in picked:
            rid = live[cid].run_id
            scratch = Path(tmp, cid)
            scratch.mkdir()
            prompt = _artifact_text(client, rid, Artifacts.PROMPT, scratch)
            output = _artifact_text(client, rid, Artifacts.OUTPUT, scratch)
            recorded[cid] = (prompt, output, dict(client.get_run(rid).data.metrics))
    groups: dict[str, tuple[Any, list[Job]]] = {}
    for cid in picked:
        cell = cells[cid]
        seed_r = repeat_seed(exp.spec.generation.seed, cell.repeat) if cell.repeat else None
        if cell.model not in groups:
            groups[cell.model] = (resolve_model(exp, exp.spec.models[cell.model]), [])
        groups[cell.model][1].append(Job(cid, recorded[cid][0], seed=seed_r))
    params = exp.spec.generation.model_copy(update={"batch_size": batch_size, "batch_invariant": False})
    answers: dict[str, JobResult] = {}
    executor = make_executor(exp.spec, state_dir=exp.state_dir)
    executor.check()
    try:
        executor.prestart({k: m for k, (m, _) in groups.items()}, exp.state_dir / "audits" / plan.run_id)
        executor.run(groups, params, lambda results: answers.update({r.cell_id: r for r in results}))
    except BaseException:
        executor.shutdown()
        raise
    for cid in picked:
        cell, (_, before, metrics), got = cells[cid], recorded[cid], answers.get(cid)
        size = int(metrics.get(Metrics.BATCH_SIZE, 0))
        if got is None or got.status != Status.FINISHED or got.output is None:
            error = got.error if got is not None else "no answer came back"
            audited = AuditedCell(cid, cell.template, cell.question, size, CRASHED, before, None, error=error)
        else:
            same = got.output == before
            verdict = IDENTICAL if same else CHANGED
            diff = "" if same else word_diff(before, got.output)
            audited = AuditedCell(cid, cell.template, cell.question, size, verdict, before, got.output, diff)
        outcome.cells.append(audited)
    if record:
        _record(client, outcome, {cid: live[cid].run_id for cid in picked})
    return outcome


def _record(client: MlflowClient, outcome: AuditOutcome, runs: dict[str, str]) -> None:
    """Tag each audited cell's child run, and store the findings on the execution."""
    for c in outcome.cells:
        if c.verdict != CRASHED:
            client.set_tag(runs[c.cell_id], Tags.BATCH_SENSITIVE, TRUE if c.verdict == CHANGED else FALSE)
    name = f"{Artifacts.AUDIT}/{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {
        "run_id": outcome.run_id,
        "batch_size": outcome.batch_size,
        "finished": outcome.finished,
        "drifts": outcome.drifts,
        "cells": [asdict(c) for c in outcome.cells],
    }
    text = redact(json.dumps(payload, indent=1, ensure_ascii=False), secret_values())
    client.log_text(outcome.run_id, text, name)
    outcome.artifact = name
