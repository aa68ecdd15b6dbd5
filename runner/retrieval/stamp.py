"""The stamp of a collection's last complete ingest: what lets a run over an unchanged corpus leave Chroma shut.

Chroma rewrites its files whenever a client opens them, so nothing in them can say "unchanged since the last
run" without opening the store (and importing chromadb: half a second of a warm `pov run`). The stamp can,
because pov-runner is the one writer of its collections (runner.retrieval.indexing). An embedded store keeps,
beside Chroma's own files, `pov-stamps/<collection>.json`: the collection's metadata as the last complete
ingest left it, and a token that is new whenever an ingest writes.

- An ingest holds the collection's lock (`flock` on `pov-stamps/<collection>.lock`) through its reads and
  writes, so two processes never ingest one collection at once.
- It removes the stamp before its first write and writes a new one (whole, by rename) after its last: a stamp
  never outlives the state it describes. An ingest killed half-way leaves none, and the next run goes to
  Chroma, which says the collection is half-written, and finishes it.
- A stamp in a format this code does not know is no stamp.

A server store (`corpus.chroma_url`) has none: other clients may write to it. Results keyed by the token
(runner.retrieval.hit_cache) are valid exactly as long as the stamp.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAMP_VERSION = 1
FOLDER = "pov-stamps"


@dataclass(frozen=True)
class Stamp:
    token: str
    """New with every ingest that wrote: what cached results are keyed by."""
    metadata: dict[str, Any]
    """The collection's metadata when the ingest completed (its `pov.state` is `complete`)."""
    count: int
    """Chunks in the collection."""


def _path(store: Path, name: str) -> Path:
    return store / FOLDER / f"{name}.json"


def read_stamp(store: Path, name: str) -> Stamp | None:
    """The collection's stamp, or None (none written, removed by an ingest under way, or unreadable)."""
    try:
        raw = json.loads(_path(store, name).read_text(encoding="utf-8"))
        if raw.get("version") != STAMP_VERSION or raw["metadata"].get("pov.state") != "complete":
            return None
        return Stamp(str(raw["token"]), dict(raw["metadata"]), int(raw["count"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_stamp(store: Path, name: str, metadata: dict[str, Any], count: int) -> Stamp:
    """A new stamp (new token) for the collection as it now is: written whole, then renamed into place."""
    stamp = Stamp(uuid.uuid4().hex, dict(metadata), int(count))
    target = _path(store, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = {"version": STAMP_VERSION, "token": stamp.token, "metadata": stamp.metadata, "count": stamp.count}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return stamp


def remove_stamp(store: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(store, name).unlink()


@contextlib.contextmanager
def ingest_lock(store: Path, name: str) -> Iterator[bool]:
    """Hold the collection's ingest lock for the body, waiting for another process's ingest to end; the
    kernel releases it when its holder dies, kill -9 included. Yields False on a filesystem without locks:
    the ingest then runs as before, and writes no stamp (nothing would keep another ingest out)."""
    path = store / FOLDER / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError:
            locked = False
        yield locked
    finally:
        os.close(fd)
