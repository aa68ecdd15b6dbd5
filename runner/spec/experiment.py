"""The `Experiment`: a validated spec together with the content of every file it names, and the project
it belongs to. Everything after loading reads the experiment, never the spec's files again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.spec.schema import Question, Spec
from runner.spec.templates import TemplateInfo

STORE_LOCATION = ("chroma_url", "persist_dir")
"""Fields of `corpus` that say where the chunks are kept, not which chunks: outside the spec hash."""
ADDED_SINCE_V1: dict[str, Any] = {
    "checks.copied_share": 0.5,
    "generation.batch_invariant": False,
    "matrix.zip": [],
    "matrix.repeat": 1,
    "limits.max_memory_retries": 256,
    "checks.loop_window_ratio": 0.75,
    "generation.compile": False,
    "faults.*.above_batch_tokens": None,
    "pov_scores": {"l2": {"method": "l2", "weight": 0.5, "reference": "others"}},
    "matrix.pov_score": "all",
    "query_reranker": None,
    "models.*.base_url": None,
    "models.*.api_key_env": None,
    "models.*.max_concurrency": 8,
    "models.*.request_timeout_s": None,
    "models.*.server": None,
    "tracking.traces": True,  # `tracking` is outside the hash anyway (where runs are recorded, not results)
    "corpus.language": "auto",
    "corpus.chunking.max_tokens": 200,
    "corpus.chunking.overlap_tokens": 30,
}
"""Spec fields added after the spec hash was first defined, with their defaults (`*`: every item of a list or
value of a mapping: every fault, every model). A spec that leaves one at its default hashes as before the field
existed, and so do its cells' ids, so adding a field never orphans existing executions; a spec that sets it gets
a new hash, as any change of meaning should. Register every new field here."""


@dataclass
class Experiment:
    """A validated spec with the content of every file it names."""

    spec: Spec
    path: Path
    root: Path
    questions: dict[str, Question]
    pov_sets: dict[str, list[str]]
    templates: dict[str, TemplateInfo]
    raw: dict[str, Any]
    sources: list[Path] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        """Git-ignored working state of the project (Chroma store, caches, run folders)."""
        return self.root / ".pov"

    @property
    def spec_hash(self) -> str:
        """Hash of everything that defines results: the resolved spec and the text of the files it names."""
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What `spec_hash` hashes. Left out: commentary (`description`), where runs are recorded and how
        they are executed (`tracking`, `executor`), and where the Chroma store lives (`corpus.chroma_url`,
        `corpus.persist_dir`): moving the chunks to another server or folder is not another experiment.
        Those two stay in the payload as None, as every spec that did not set them was hashed, so that no
        existing execution gets a new hash."""
        spec = self.spec.model_dump(mode="json", exclude={"extends", "description", "tracking", "executor"})
        spec["corpus"].update({key: None for key in STORE_LOCATION})
        _omit_new_defaults(spec)
        return {
            "spec": portable(spec, self.root),
            "questions": {k: q.text for k, q in self.questions.items()},
            "pov_sets": self.pov_sets,
            "templates": {k: t.text for k, t in self.templates.items()},
        }


def _omit_new_defaults(spec: dict[str, Any]) -> None:
    for dotted, default in ADDED_SINCE_V1.items():
        *parents, leaf = dotted.split(".")
        nodes: list[Any] = [spec]
        for key in parents:
            if key == "*":
                nodes = [
                    v
                    for n in nodes
                    for v in (n.values() if isinstance(n, dict) else n if isinstance(n, list) else [])
                ]
            else:
                nodes = [n.get(key) for n in nodes if isinstance(n, dict)]
        for node in nodes:
            if isinstance(node, dict) and leaf in node and node[leaf] == default:
                del node[leaf]


def model_identity(dump: dict[str, Any]) -> dict[str, Any]:
    """A model entry's dump (`Model.model_dump(mode="json")`) without the fields added since the spec hash
    was defined that are at their defaults: what a cell id hashes of its model, unchanged by new fields."""
    wrapped = {"models": {"m": dict(dump)}}
    _omit_new_defaults(wrapped)
    return wrapped["models"]["m"]


def without_new_defaults(section: str, dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` (the dumped spec section `section`) without the fields of ADDED_SINCE_V1 left at their
    default, for hashes of one section (cell ids hash `generation`)."""
    wrapped = {section: dump}
    _omit_new_defaults(wrapped)
    return wrapped[section]


def chunking_identity(spec: Spec) -> dict[str, Any]:
    """What decides how the corpus is cut: the chunking parameters, and the corpus language where it is not
    `auto`, less the fields of ADDED_SINCE_V1 at their default, so that cell ids and the chunking a
    collection recorded stay what they were before those fields existed."""
    corpus = spec.corpus
    section = without_new_defaults(
        "corpus", {"chunking": corpus.chunking.model_dump(mode="json"), "language": corpus.language}
    )
    identity: dict[str, Any] = section["chunking"]
    if "language" in section:
        identity["language"] = section["language"]
    return identity


def portable(obj: Any, root: Path) -> Any:
    """`obj` with absolute paths inside the project made relative to it, so that hashes and ids are the same
    in every checkout of the project."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, str) and obj.startswith(prefix):
        return obj[len(prefix) :]
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, root) for v in obj]
    return obj


def project_root(start: Path) -> Path:
    """The nearest folder above `start` holding pyproject.toml or .git; else `start`'s own folder."""
    start = start.resolve()
    for d in [start.parent, *start.parent.parents]:
        if (d / "pyproject.toml").exists() or (d / ".git").exists():
            return d
    return start.parent


def display_path(path: Path) -> str:
    """`path` as a message names it: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
