"""What MlflowTracker writes, as plain data: the values of the tags, params, metrics and files of an
execution (parent run) and of each cell (child run), under the names in runner.tracking.schema.

Every string that leaves here has been through `runner.redaction.redact`, and every name is one MLflow
accepts, so the tracker only has to send them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

from runner.redaction import redact
from runner.run import TAGGED_PACKAGES, stage_metrics
from runner.spec import AXES, snapshot_files
from runner.tracking.schema import (
    DEFAULT_CAUSE,
    FALSE,
    NONE,
    NOT_INSTALLED,
    SCHEMA_VERSION,
    TRUE,
    UNKNOWN,
    Artifacts,
    Kind,
    Params,
    State,
    Status,
    Tags,
)

if TYPE_CHECKING:
    from runner.run import CellResult
    from runner.spec import Cell, Experiment

MAX_PARAM = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG = 8000  # MAX_TAG_VAL_LENGTH
MAX_ERROR = 500
"""`pov.error` holds the start of a crash's message; stderr.txt holds all of it."""


def millis(t: float | None = None) -> int:
    """MLflow's timestamps: milliseconds since the epoch (now when `t` is not given)."""
    return int((t if t else time.time()) * 1000)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


@functools.lru_cache(maxsize=4096)
def key(name: str) -> str:
    """A metric or tag name MLflow accepts: a bad character in a check's name must not stop the run."""
    return re.sub(r"[^/\w.\- :]", "_", name).strip("/") or "_"


def short_hash(obj: Any) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def ranking_hash(context: dict[str, Any]) -> str:
    """Hash of the chunk ids of the three stages in rank order: equal hashes mean identical rankings."""
    stages = context.get("stages", []) if isinstance(context, dict) else []
    return short_hash([[s.get("name"), s.get("ids")] for s in stages if isinstance(s, dict)])


def axis_value(cell: Cell, axis: str) -> str:
    """A cell's value on an axis as its param holds it (k as `15-10-5`)."""
    return cell.k_label if axis == "k" else str(cell.axes()[axis])


def _clean(values: dict[str, Any], limit: int, secrets: dict[str, str]) -> dict[str, str]:
    return {key(redact(k, secrets)): cut(redact(str(v), secrets), limit) for k, v in values.items()}


def parent_tags(
    exp: Experiment, manifest: dict[str, Any], rerun_of: str | None, secrets: dict[str, str]
) -> dict[str, str]:
    git = manifest.get("git", {})
    versions = manifest.get("versions", {})
    tags = {
        Tags.KIND: Kind.EXECUTION,
        Tags.SCHEMA_VERSION: str(SCHEMA_VERSION),
        Tags.SPEC_NAME: exp.spec.name,
        Tags.SPEC_HASH: exp.spec_hash,
        Tags.STATE: State.RUNNING,
        Tags.SESSIONS: "1",
        Tags.GIT_COMMIT: git.get("commit") or UNKNOWN,
        Tags.GIT_BRANCH: git.get("branch") or UNKNOWN,
        Tags.GIT_DIRTY: {True: TRUE, False: FALSE}.get(git.get("dirty"), UNKNOWN),
        Tags.GPU_NAME: manifest.get("gpu", {}).get("name") or NONE,
        Tags.CORPUS_FINGERPRINT: manifest.get("corpus", {}).get("fingerprint") or NONE,
        # MLflow infers these only for its fluent API, from sys.argv[0]; set so that its UI shows them.
        Tags.SOURCE_TYPE: "LOCAL",
        Tags.SOURCE_NAME: str(exp.path),
    }
    for pkg in TAGGED_PACKAGES:
        tags[Tags.version(pkg)] = versions.get(pkg) or NOT_INSTALLED
    if git.get("commit"):
        tags[Tags.SOURCE_GIT_COMMIT] = git["commit"]
    if exp.spec.description:
        tags[Tags.NOTE] = exp.spec.description
    if rerun_of:
        tags[Tags.RERUN_OF] = rerun_of
    return _clean(tags, MAX_TAG, secrets)


def parent_params(exp: Experiment, cells: list[Cell], secrets: dict[str, str]) -> dict[str, str]:
    qr = exp.spec.query_reranker
    params = {
        Params.SPEC_NAME: exp.spec.name,
        Params.SPEC_HASH: exp.spec_hash,
        Params.QUERY_RERANKER: f"{qr.provider}:{qr.model}" if qr else NONE,
    }
    for axis in AXES:
        values = dict.fromkeys(axis_value(c, axis) for c in cells)
        params[Params.axis(axis)] = ",".join(values)
    return _clean(params, MAX_PARAM, secrets)


def execution_files(exp: Experiment, manifest: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The parent's artifacts: standalone spec.yaml, templates/<name>.j2 (laid out by the spec stage's
    snapshot, which names them as Artifacts does), manifest.json."""
    files = snapshot_files(exp)
    files[Artifacts.MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    return {rel: redact(text, secrets) for rel, text in files.items()}


def cell_tags(r: CellResult, parent_id: str, secrets: dict[str, str]) -> dict[str, str]:
    tags = {
        Tags.PARENT_RUN_ID: parent_id,
        Tags.KIND: Kind.CELL,
        Tags.CELL_ID: r.cell.id,
        Tags.STATUS: r.status,
        Tags.RANKING_HASH: ranking_hash(r.context),
    }
    if r.output is not None:
        tags[Tags.OUTPUT_HASH] = short_hash(r.output)
    if r.batch.get("attempt"):
        tags[Tags.BATCH_ID] = str(r.batch["attempt"])
    if r.attempts:
        tags[Tags.ATTEMPTS] = attempts_tag(r.attempts)
    if r.status == Status.CRASHED:
        tags[Tags.CAUSE] = r.cause or DEFAULT_CAUSE
        if r.error:
            tags[Tags.ERROR] = cut(r.error, MAX_ERROR)
    for k, v in r.tags.items():  # the run stage's check.<name> flags among them
        tags.setdefault(k, str(v))
    return _clean(tags, MAX_TAG, secrets)


def attempts_tag(attempts: list[dict[str, Any]], limit: int = MAX_TAG) -> str:
    """The attempts as compact JSON within a tag's limit: whole attempts, the earliest left out first (the
    last, the one that fitted or crashed alone, always stays); batch.json holds all of them."""
    kept = list(attempts)
    while True:
        text = json.dumps(kept, separators=(",", ":"), default=str)
        if len(text) <= limit or len(kept) <= 1:
            return text
        kept.pop(0)


def cell_params(r: CellResult, model: tuple[str, str], secrets: dict[str, str]) -> dict[str, str]:
    """`model` is (name, revision) from the spec and manifest; the engine's tags, which hash the folder it
    actually loaded, win over it."""
    c = r.cell
    params = {
        Params.CELL_ID: c.id,
        **{axis: axis_value(c, axis) for axis in AXES},
        Params.MODEL_NAME: r.tags.get(Params.MODEL_NAME, model[0]),
        Params.MODEL_REVISION: r.tags.get(Params.MODEL_REVISION, model[1]),
        Params.REPEAT: str(c.repeat),
        Params.BASE_CELL_ID: c.base,
    }
    return _clean(params, MAX_PARAM, secrets)


def cell_metrics(r: CellResult) -> dict[str, float]:
    """The cell's metrics as the run stage measured them (its retrieval scores among them); the scores
    are worked out from the context only where the result lacks them (a result built without the engine)."""
    values = {**stage_metrics(r.context), **r.metrics}
    return {
        key(k): float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(float(v))
    }


def cell_files(r: CellResult, secrets: dict[str, str]) -> dict[str, str]:
    """prompt.txt, context.json (the three ranked stages), output.md, and stderr.txt for a crash.
    context.json is redacted as text: redact() also finds a secret in its JSON-escaped form."""
    files = {
        Artifacts.PROMPT: r.prompt,
        Artifacts.CONTEXT: json.dumps(r.context, indent=1, ensure_ascii=False, default=str),
    }
    if r.output is not None:
        files[Artifacts.OUTPUT] = r.output
    if r.status == Status.CRASHED:
        files[Artifacts.STDERR] = "\n".join(x for x in (r.error, r.stderr_tail) if x) or "(no output)"
    if r.batch or r.attempts:
        files[Artifacts.BATCH] = json.dumps({"batch": r.batch, "attempts": r.attempts}, indent=1, default=str)
    return {name: redact(text, secrets) for name, text in files.items()}
