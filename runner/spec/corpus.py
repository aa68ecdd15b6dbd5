"""The one corpus reader: which files a spec's corpus names, and their text. Ingest, the manifest's
fingerprint and the tiny-model builder all read through here, so what is fingerprinted is exactly what is
read, and each skips the same files for the same reasons.

A file that cannot be ingested (over the size limit, unreadable, binary, not UTF-8, empty) is a `Skipped`
with the reason; the caller decides whether that is a warning or an error. Nothing here raises for a file.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

MAX_FILE_BYTES = 20_000_000
"""A single corpus file larger than this is almost certainly not prose; refuse it rather than eat memory.
(Training the tiny model's tokenizer takes about 100 bytes of memory per byte of text.)"""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    rel: str
    """Path relative to the corpus folder, with `/` separators."""
    sha256: str
    """Of the file's bytes as stored."""
    text: str


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rel}: {self.reason}"


@dataclass
class CorpusText:
    """What a corpus reads as: the files with their text, and the files skipped with why.
    (Not `Corpus`: that is the spec's `corpus:` section.)"""

    root: Path
    files: list[SourceFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    entries: list[SourceFile | Skipped] = field(default_factory=list)
    """Both, in listing order: what the digests follow."""

    def digests(self) -> dict[str, str]:
        """`corpus_digests` of what was read, without reading the files again."""
        return {got.rel: _digest(got) for got in self.entries}


def include_problem(pattern: str) -> str | None:
    """Why an include pattern cannot name files under the corpus folder, or None."""
    if not pattern.strip():
        return "a blank pattern matches nothing; remove it"
    if (
        PurePosixPath(pattern).is_absolute()
        or PureWindowsPath(pattern).is_absolute()
        or pattern.startswith(("/", "\\", "~/"))
        or ".." in pattern.replace("\\", "/").split("/")
    ):
        return f"{pattern!r}: patterns are relative to corpus.path; write '*.md' or 'sub/*.md'"
    return None


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
        if _matches(rel, include) and _is_file(p):
            out.append(p)
    return out


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:
        return True  # cannot even stat it (a folder that lists but does not open): the reader says why


def read_source(path: Path, rel: str) -> SourceFile | Skipped:
    """A corpus file as text, or why it cannot be ingested. Never reads more than MAX_FILE_BYTES + 1
    bytes, even from a file that grows after its size was checked."""
    limit = MAX_FILE_BYTES
    too_big = Skipped(rel, f"larger than {limit:,} bytes; split it up")
    try:
        if path.stat().st_size > limit:
            return too_big
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        return Skipped(rel, f"cannot read ({e.strerror or e})")
    if len(raw) > limit:
        return too_big
    if b"\0" in raw[:8192]:
        return Skipped(rel, "binary file (contains NUL bytes); only UTF-8 text is ingested")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return Skipped(rel, f"not UTF-8 (byte 0x{raw[e.start]:02x} on line {line}); save it as UTF-8")
    if not text.strip():
        return Skipped(rel, "empty file (no text)")
    return SourceFile(path, rel, hashlib.sha256(raw).hexdigest(), text)


def iter_corpus(root: Path, include: Sequence[str]) -> Iterator[SourceFile | Skipped]:
    """Each listed file as read, one at a time: a caller that only hashes holds one file's text at most."""
    for path in corpus_files(root, include):
        yield read_source(path, path.relative_to(root).as_posix())


def read_corpus(root: Path, include: Sequence[str]) -> CorpusText:
    corpus = CorpusText(root)
    for got in iter_corpus(root, include):
        corpus.entries.append(got)
        if isinstance(got, SourceFile):
            corpus.files.append(got)
        else:
            corpus.skipped.append(got)
    return corpus


def corpus_digests(root: Path, include: Sequence[str]) -> dict[str, str]:
    """Relative path -> sha256 of each file read, or `skipped: <reason>` for one that is not. A skipped
    file counts by its reason, so repairing it (now hashed) is a change, and an unreadable one raises
    nothing."""
    return {got.rel: _digest(got) for got in iter_corpus(root, include)}


def _digest(got: SourceFile | Skipped) -> str:
    return got.sha256 if isinstance(got, SourceFile) else f"skipped: {got.reason}"
