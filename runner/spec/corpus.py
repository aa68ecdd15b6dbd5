"""Which files a spec's corpus names: one listing for ingest, the manifest's fingerprint and the tiny-model
builder, so that what is fingerprinted is exactly what is read."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def corpus_files(root: Path, include: Sequence[str]) -> list[Path]:
    """Files under `root` matching any pattern (by relative path or by name), sorted. Hidden files and
    anything in a hidden folder (`.git/`, an editor's `.swp`, `.DS_Store`) are left out: they are never
    part of a corpus, and counting them would let an editor's scratch file change the fingerprint."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if p.is_file() and _matches(rel, include):
            out.append(p)
    return out
