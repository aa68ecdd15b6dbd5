"""What MlflowTracker writes, as plain data: the tags, params, metrics and files of parent and child runs.

The schema is agreed in CONTRACTS.md (the report reads it). Every string that leaves here has been through
`runner.redaction.redact`, and every name is one MLflow accepts, so the tracker only has to send them.
Beyond the contract, children carry `pov.ranking_hash` and `pov.output_hash` (so `pov rerun` can count
identical cells without downloading artifacts) and `pov.error` (the crash message, cut to 500 characters);
superseded children carry `pov.superseded=true`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from typing import TYPE_CHECKING, Any

from runner.redaction import redact
from runner.spec import snapshot_files

if TYPE_CHECKING:
    from runner.run.results import CellResult
    from runner.spec import Cell, Experiment

MAX_PARAM = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG = 8000  # MAX_TAG_VAL_LENGTH
TRACKED_PACKAGES = (
    "python",
    "torch",
    "transformers",
    "unsloth",
    "chromadb",
    "mlflow",
    "sentence-transformers",
)
"""Tagged on the parent as `version.<pkg>`; manifest.json holds more."""


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


def stage_metrics(context: dict[str, Any]) -> dict[str, float]:
    """Top score of each stage and the mean of the last, from a RetrievalResult.to_dict()."""
    out: dict[str, float] = {}
    stages = context.get("stages", []) if isinstance(context, dict) else []
    for i, stage in enumerate(stages[:3], 1):
        scores = [float(s) for s in (stage.get("scores") or []) if isinstance(s, (int, float))]
        if scores:
            out[f"stage{i}_top_score"] = max(scores)
            if i == 3:
                out["stage3_mean_score"] = sum(scores) / len(scores)
    return out


def _clean(values: dict[str, Any], limit: int, secrets: dict[str, str]) -> dict[str, str]:
    return {key(redact(k, secrets)): cut(redact(str(v), secrets), limit) for k, v in values.items()}


def parent_tags(
    exp: Experiment, manifest: dict[str, Any], rerun_of: str | None, secrets: dict[str, str]
) -> dict[str, str]:
    git = manifest.get("git", {})
    versions = manifest.get("versions", {})
    tags = {
        "pov.kind": "execution",
        "pov.spec_name": exp.spec.name,
        "pov.spec_hash": exp.spec_hash,
        "pov.state": "running",
        "pov.sessions": "1",
        "git.commit": git.get("commit") or "unknown",
        "git.branch": git.get("branch") or "unknown",
        "git.dirty": {True: "true", False: "false"}.get(git.get("dirty"), "unknown"),
        "gpu.name": manifest.get("gpu", {}).get("name") or "none",
        "corpus.fingerprint": manifest.get("corpus", {}).get("fingerprint") or "none",
        # MLflow infers these only for its fluent API, from sys.argv[0]; set so that its UI shows them.
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": str(exp.path),
    }
    for pkg in TRACKED_PACKAGES:
        tags[f"version.{pkg}"] = versions.get(pkg) or "not installed"
    if git.get("commit"):
        tags["mlflow.source.git.commit"] = git["commit"]
    if exp.spec.description:
        tags["mlflow.note.content"] = exp.spec.description
    if rerun_of:
        tags["pov.rerun_of"] = rerun_of
    return _clean(tags, MAX_TAG, secrets)


def parent_params(exp: Experiment, cells: list[Cell], secrets: dict[str, str]) -> dict[str, str]:
    from runner.spec import AXES

    params = {"spec_name": exp.spec.name, "spec_hash": exp.spec_hash}
    for axis in AXES:
        values = dict.fromkeys(c.k_label if axis == "k" else str(getattr(c, axis)) for c in cells)
        params[f"axis.{axis}"] = ",".join(values)
    return _clean(params, MAX_PARAM, secrets)


def execution_files(exp: Experiment, manifest: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The parent's artifacts: standalone spec.yaml, templates/<name>.j2, manifest.json."""
    files = snapshot_files(exp)
    files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    return {rel: redact(text, secrets) for rel, text in files.items()}


def cell_tags(r: CellResult, parent_id: str, secrets: dict[str, str]) -> dict[str, str]:
    tags = {
        "mlflow.parentRunId": parent_id,
        "pov.kind": "cell",
        "pov.cell_id": r.cell.id,
        "pov.status": r.status,
        "pov.ranking_hash": ranking_hash(r.context),
    }
    if r.output is not None:
        tags["pov.output_hash"] = short_hash(r.output)
    if r.status == "crashed":
        tags["pov.cause"] = r.cause or "exception"
        if r.error:
            tags["pov.error"] = cut(r.error, 500)
    for k, v in r.tags.items():
        tags.setdefault(k, str(v))
    return _clean(tags, MAX_TAG, secrets)


def cell_params(r: CellResult, model: tuple[str, str], secrets: dict[str, str]) -> dict[str, str]:
    """`model` is (name, revision) from the spec and manifest; the engine's tags, which hash the folder it
    actually loaded, win over it."""
    c = r.cell
    params = {
        "cell_id": c.id,
        "model": c.model,
        "template": c.template,
        "persona": c.persona,
        "pov_set": c.pov_set,
        "k": c.k_label,
        "question": c.question,
        "model_name": r.tags.get("model_name", model[0]),
        "model_revision": r.tags.get("model_revision", model[1]),
    }
    return _clean(params, MAX_PARAM, secrets)


def cell_metrics(r: CellResult) -> dict[str, float]:
    values = {**stage_metrics(r.context), **r.metrics}
    return {
        key(k): float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(float(v))
    }


def cell_files(r: CellResult, secrets: dict[str, str]) -> dict[str, str]:
    """prompt.txt, context.json (the three ranked stages), output.md, and stderr.txt for a crash.
    context.json is redacted as text: redact() also finds a secret in its JSON-escaped form."""
    files = {
        "prompt.txt": r.prompt,
        "context.json": json.dumps(r.context, indent=1, ensure_ascii=False, default=str),
    }
    if r.output is not None:
        files["output.md"] = r.output
    if r.status == "crashed":
        files["stderr.txt"] = "\n".join(x for x in (r.error, r.stderr_tail) if x) or "(no output)"
    return {name: redact(text, secrets) for name, text in files.items()}
