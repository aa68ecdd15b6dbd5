"""`pov rerun RUN_ID`: run a past execution again from what MLflow stored, naming what changed since.

What an execution stores to make this possible (parent-run artifacts):

- `spec.yaml`: the resolved spec, standalone. `extends` is flattened, every default is written out (so a
  later runner with other defaults reproduces it), questions and POV sets are inline, and each template
  points to `templates/<name>.j2` beside it. Paths that stay paths are absolute: the corpus folder (it
  must still exist; the corpus fingerprint drift says whether it changed), `corpus.persist_dir` when set,
  and local model folders.
- `templates/<name>.j2`: the template files, byte for byte.
- `manifest.json`: see runner/run/manifest.py.

(Their names, and every tag below, are in runner.tracking.schema.)

Everything stored is redacted: where the spec held the value of a credential variable (a token pasted into a
persona, say), spec.yaml holds `[redacted NAME]`. A rerun puts each such value back from the environment
while it loads the snapshot, so the cells hash to the original ids; one that cannot be put back and that
decides the cells (not the description, tracking or the Chroma location) stops the rerun before it starts.
`RUN_ID` may be any unique prefix of the execution's id (runner.tracking.run_ids).

A rerun downloads these into `<project>/.pov/reruns/<RUN_ID>/`, loads `spec.yaml` with the ordinary loader,
keeps the original project root (so the same Chroma store, caches and built models are used), compares
the stored manifest with a fresh one, prints each drift, and runs every cell as a new execution tagged
`pov.rerun_of=<RUN_ID>` in the same MLflow experiment. A killed rerun continues when the same command is
given again (`--fresh` starts over). Cell ids hash the content of what a cell uses, not file locations, so
the old and new child runs pair up by `pov.cell_id`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError
from runner.redaction import MARKER, redact, restore
from runner.tracking.client import download_json, make_client, resolve_tracking_uri, search_all, tag_is
from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.resume import SNAPSHOT
from runner.tracking.run_ids import LIST_HINT, resolve_run_id
from runner.tracking.schema import Artifacts, Kind, Tags

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from runner.run import Drift, RunSummary
    from runner.spec import Cell, Experiment


@dataclass
class RerunPlan:
    """A past execution, loaded and checked against today."""

    run_id: str
    tracking_uri: str
    experiment_id: str
    run_name: str
    exp: Experiment
    cells: list[Cell]
    old_manifest: dict[str, Any]
    manifest: dict[str, Any]
    drifts: list[Drift] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    """Variables whose values were put back where the stored spec had them redacted."""


def prepare(run_id: str, tracking_uri: str | None = None) -> RerunPlan:
    """Load execution `run_id`'s spec and manifest from MLflow and compare the manifest with now. `run_id`
    may be a unique prefix of the id (the report shows 8 characters); the plan holds the full one."""
    from mlflow.exceptions import MlflowException

    from runner.run import build_manifest, compare
    from runner.spec import expand, project_root

    uri = tracking_uri or resolve_tracking_uri()
    client = make_client(uri, must_exist=True)
    try:
        run_id = resolve_run_id(client, run_id)
        run = client.get_run(run_id)
    except UserError as e:
        raise UserError(f"pov rerun: {e}") from None
    except MlflowException as e:
        raise UserError(
            f"pov rerun: no run {run_id!r} in {redact(uri)} ({e.error_code}); {LIST_HINT}; or set "
            "MLFLOW_TRACKING_URI (or --tracking-uri) to the store that holds it"
        ) from None
    except Exception as e:  # a server that is down
        raise UserError(f"pov rerun: cannot read {redact(uri)}: {redact(str(e))[:500]}") from None
    tags = run.data.tags
    if tags.get(Tags.KIND) == Kind.CELL:
        parent = tags.get(Tags.PARENT_RUN_ID, "?")
        raise UserError(f"pov rerun: {run_id} is one cell's run; rerun its execution: pov rerun {parent}")
    if tags.get(Tags.KIND) != Kind.EXECUTION:
        raise UserError(
            f"pov rerun: {run_id} is not a pov-runner execution (no tag {Tags.KIND}={Kind.EXECUTION})"
        )
    stored = {f.path for f in client.list_artifacts(run_id)}
    if not stored >= SNAPSHOT:
        raise UserError(
            f"pov rerun: execution {run_id} has no {Artifacts.SPEC}/{Artifacts.MANIFEST} artifacts "
            "(it was killed while starting); run its spec with `pov run` instead"
        )
    stored_manifest = download_json(client, run_id, Artifacts.MANIFEST)
    project = stored_manifest.get("project", {}) if isinstance(stored_manifest, dict) else {}
    old_root = Path(project.get("root", "."))
    root = old_root if old_root.is_dir() else project_root(Path.cwd() / Artifacts.SPEC)
    dest = root / ".pov" / "reruns" / run_id
    # Downloaded beside its place and swapped in: a second `pov rerun` of the same id (which the execution
    # lock then refuses) must not delete the folder of the one that is running. The place itself stays the
    # same, so a killed rerun's snapshot has the same paths, hence the same spec hash, and resumes.
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f"{run_id}.download-", dir=dest.parent))
    try:
        for name in (*sorted(SNAPSHOT), *([Artifacts.TEMPLATES] if Artifacts.TEMPLATES in stored else [])):
            client.download_artifacts(run_id, name, str(fresh))
        if dest.exists():
            stale = dest.with_name(f"{fresh.name}.old")
            os.replace(dest, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(fresh, dest)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    old_manifest = json.loads((dest / Artifacts.MANIFEST).read_text(encoding="utf-8"))
    exp, restored = _load_snapshot(dest, run_id)
    # The snapshot lives under .pov/, but the execution belongs to its original project: same Chroma
    # store, caches and built models.
    exp.root = root
    _refuse_lost_secrets(exp, run_id)
    manifest = build_manifest(exp)
    return RerunPlan(
        run_id,
        uri,
        run.info.experiment_id,
        run.info.run_name or run_id,
        exp,
        expand(exp),
        old_manifest,
        manifest,
        compare(old_manifest, manifest),
        restored=sorted(restored),
    )


def _load_snapshot(dest: Path, run_id: str) -> tuple[Experiment, set[str]]:
    """The stored spec, loaded with each redacted secret put back from the environment (the variables put
    back are returned).

    The tracker stored spec.yaml and the templates redacted: `[redacted MY_TOKEN]` where a persona, a
    question or a template held the token. Loaded as stored, those cells would hash to other ids than the
    original's and nothing would be compared (a rerun then said "0/0 cells"). The values are written back
    into the downloaded files only while they are loaded, then the redacted text is put back: no secret
    stays on disk under .pov/."""
    from runner.spec import load_spec

    files = [dest / Artifacts.SPEC, *sorted((dest / Artifacts.TEMPLATES).glob("**/*"))]
    stored = {f: f.read_text(encoding="utf-8") for f in files if f.is_file()}
    restored: set[str] = set()
    left: set[str] = set()
    try:
        for f, text in stored.items():
            clean, names = restore(text)
            restored |= names
            left |= {m[0] for m in MARKER.finditer(clean)}
            if names:
                f.write_text(clean, encoding="utf-8")
        try:
            return load_spec(dest / Artifacts.SPEC), restored
        except UserError as e:
            if not left:
                raise
            raise UserError(f"{e}\n{_lost_secrets(run_id, sorted(left))}") from None
    finally:
        for f, text in stored.items():
            if restored:
                f.write_text(text, encoding="utf-8")


def _refuse_lost_secrets(exp: Experiment, run_id: str) -> None:
    """UserError when a redacted secret that could not be put back is part of what identifies the cells
    (description, tracking and the Chroma location are not): the rerun would compare none of them."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, str):
            found.extend(f"{path} ({m[0]})" for m in MARKER.finditer(node))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")

    identity = exp.identity()
    walk(identity.pop("spec"), "")
    walk(identity, "")
    if found:
        raise UserError(_lost_secrets(run_id, found))


def _lost_secrets(run_id: str, where: list[str]) -> str:
    return (
        f"pov rerun: execution {run_id} stored its spec with secrets redacted, and they decide its cells: "
        f"{', '.join(where)}. Set each variable named there to the value the original run had and run "
        "`pov rerun` again; a secret with no variable name (a URL's password, a token pasted into the spec) "
        "cannot be put back: run the spec itself with `pov run`"
    )


@dataclass
class Agreement:
    """How the new execution's cells compare with the old one's, by output and ranking hashes."""

    cells: int = 0
    same_output: int = 0
    same_ranking: int = 0
    differing: list[str] = field(default_factory=list)


def agreement(tracking_uri: str, experiment_id: str, old_run: str, new_run: str) -> Agreement:
    """Pair the two executions' live child runs by cell id and count identical outputs and rankings."""
    client = make_client(tracking_uri)

    def children(pid: str) -> dict[str, dict[str, str]]:
        runs = search_all(client, [experiment_id], tag_is(Tags.PARENT_RUN_ID, pid))
        return {r.data.tags.get(Tags.CELL_ID, r.info.run_id): r.data.tags for r in runs}

    old, new = children(old_run), children(new_run)
    result = Agreement()
    for cid in sorted(set(old) & set(new)):
        result.cells += 1
        a, b = old[cid], new[cid]
        same_out = all(a.get(t) == b.get(t) for t in (Tags.OUTPUT_HASH, Tags.STATUS))
        same_rank = a.get(Tags.RANKING_HASH) == b.get(Tags.RANKING_HASH)
        result.same_output += same_out
        result.same_ranking += same_rank
        if not (same_out and same_rank):
            result.differing.append(cid)
    return result


@dataclass
class RerunOutcome:
    plan: RerunPlan
    new_run_id: str | None
    summary: RunSummary
    agreement: Agreement | None


def rerun(
    run_id: str,
    *,
    tracking_uri: str | None = None,
    fresh: bool = False,
    retry_crashed: bool = False,
    console: Console | None = None,
    say: Callable[[str], None] = print,
) -> RerunOutcome:
    """Run execution `run_id` (or a unique prefix of it) again as a new execution linked by `pov.rerun_of`;
    `say` gets each line."""
    from runner.run import run_experiment

    plan = prepare(run_id, tracking_uri)
    run_id = plan.run_id  # the full id, when a prefix was given
    say(f"rerunning {plan.run_name} ({run_id}): {len(plan.cells)} cells, spec from {plan.exp.path}")
    if plan.restored:
        names = ", ".join(plan.restored)
        say(f"secrets put back from the environment where the stored spec had them redacted: {names}")
    if plan.drifts:
        for drift in plan.drifts:
            say(f"drift: {drift}")
    else:
        say("no drift: code, packages, corpus, models and GPU match the original execution")
    tracker = MlflowTracker(plan.tracking_uri, experiment_id=plan.experiment_id, rerun_of=run_id)
    summary = run_experiment(
        plan.exp, plan.cells, tracker, console=console, fresh=fresh, retry_crashed=retry_crashed
    )
    agree = None
    if tracker.run_id:
        agree = agreement(plan.tracking_uri, plan.experiment_id, run_id, tracker.run_id)
        say(
            f"new execution {tracker.run_id}: outputs identical in {agree.same_output}/{agree.cells} cells, "
            f"rankings identical in {agree.same_ranking}/{agree.cells}"
        )
    return RerunOutcome(plan, tracker.run_id, summary, agree)
