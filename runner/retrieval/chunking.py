"""Cut corpus files into chunks: paragraph-aware packing up to `max_words`, with `overlap_words` of overlap
where a paragraph too long for one chunk is split.

Every chunk gets an id that hashes its file's relative path and its text, so ingesting the same corpus again
yields the same ids (nothing to add), an edited file yields new ids only for the chunks whose text changed,
and a crash halfway through writing is repaired by the next ingest (the ids say what is already stored).

Boilerplate (page furniture: link lists, menus, reference lists, notices) is left out paragraph by paragraph
before packing when `drop_boilerplate` is on, by the rules of runner.retrieval.boilerplate; chunks left
with fewer than 8 words are dropped too. `dropped`, where given, receives what was left out and why.

Text written without spaces (Japanese, Chinese: `corpus.language`, or each document by its script) is
packed in tokens instead, up to `max_tokens` (runner.retrieval.token_chunking); the boilerplate filter and
the 8-unit floor apply to it alike, in its unit. Text with spaces takes exactly the path it always took, so
its chunk ids do not move.

Reading the files is not done here: runner.spec.corpus is the one reader (ingest, the manifest and the
tiny-model builder share its skip rules and limits).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from runner.retrieval.boilerplate import boilerplate_reason, paragraph_size, stop_counts, stopword_density
from runner.retrieval.language import token_language
from runner.retrieval.segmenter import Segmenter, segmenter
from runner.retrieval.token_chunking import pack_tokens
from runner.spec import AUTO, SourceFile, corpus_digests

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
_HEADING = re.compile(r"^#{1,6}\s")
MIN_CHUNK_WORDS = 8


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    source: str
    """Path of the file, relative to the corpus folder, with `/` separators."""
    position: int
    """0-based index of the chunk within its file."""
    language: str | None = None
    """The language whose tokens sized it (`ja`, `zh`); None for text with spaces, sized in words."""
    tokens: int | None = None
    """Its size in those tokens."""

    @property
    def words(self) -> int:
        return len(self.text.split())

    def metadata(self) -> dict[str, str | int]:
        meta: dict[str, str | int] = {"source": self.source, "position": self.position, "words": self.words}
        if self.language is not None and self.tokens is not None:  # text with spaces keeps what it stored
            meta.update(language=self.language, tokens=self.tokens)
        return meta


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, stripped; empty ones dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


# The e-mail branch starts only where a run of local-part characters starts: without the lookbehind it
# was tried again at every character of a long run, each try scanning to the run's end (quadratic).
def is_boilerplate_chunk(text: str) -> bool:
    """Whether at least half of a chunk's words are in paragraphs `boilerplate_reason` flags: how retrieval
    counts the boilerplate each stage let through (the rules judge paragraphs; a chunk packs several)."""
    paragraphs = split_paragraphs(text)
    words = sum(paragraph_size(p) for p in paragraphs)
    if not words:
        return False
    english = stopword_density(text) >= 0.2
    flagged = sum(paragraph_size(p) for p in paragraphs if boilerplate_reason(p, english) is not None)
    return 2 * flagged >= words


def _windows(words: list[str], max_words: int, overlap_words: int) -> list[list[str]]:
    step = max_words - overlap_words
    out = []
    start = 0
    while True:
        out.append(words[start : start + max_words])
        if start + max_words >= len(words):
            return out
        start += step


SHORT_CHUNK = f"chunk under {MIN_CHUNK_WORDS} words"
"""The reason recorded for a chunk dropped for its size."""


def chunk_text(
    text: str,
    max_words: int,
    overlap_words: int,
    drop_boilerplate: bool = False,
    dropped: list[tuple[str, str]] | None = None,
    *,
    seg: Segmenter | None = None,
    max_tokens: int = 200,
    overlap_tokens: int = 30,
) -> list[str]:
    """Pack whole paragraphs into chunks of at most `max_words` words; a paragraph longer than that is cut
    into windows that repeat `overlap_words` words, and its last window is packed with what follows.
    With `seg`, sizes are tokens of that segmenter instead, up to `max_tokens` (runner.retrieval.token_chunking).
    With `drop_boilerplate`, `dropped` (when given) receives (reason, text) of every paragraph and short
    chunk left out."""
    if overlap_words >= max_words:
        raise ValueError("overlap_words must be smaller than max_words")
    paragraphs = split_paragraphs(text)
    if drop_boilerplate:
        paragraphs = _prose(paragraphs, dropped)
    if seg is not None:
        chunks = pack_tokens(paragraphs, seg, max_tokens, overlap_tokens)
        if drop_boilerplate:
            short = [c for c in chunks if seg.count(c) < MIN_CHUNK_WORDS]
            if dropped is not None:
                dropped += [(SHORT_CHUNK, c) for c in short]
            chunks = [c for c in chunks if c not in short]
        return chunks
    chunks = _pack_words(paragraphs, max_words, overlap_words)
    if drop_boilerplate:
        if dropped is not None:
            dropped += [(SHORT_CHUNK, c) for c in chunks if len(c.split()) < MIN_CHUNK_WORDS]
        chunks = [c for c in chunks if len(c.split()) >= MIN_CHUNK_WORDS]
    return chunks


def _prose(paragraphs: list[str], dropped: list[tuple[str, str]] | None) -> list[str]:
    """The paragraphs no boilerplate rule flags; `dropped` receives the others with their reason."""
    # The file's stopword density is the paragraphs' counts summed: each paragraph is counted once.
    counts = [stop_counts(p) for p in paragraphs]
    total = sum(t for _, t in counts)
    english = total > 0 and sum(s for s, _ in counts) / total >= 0.2
    kept = []
    for p, (stops, n) in zip(paragraphs, counts, strict=True):
        reason = boilerplate_reason(p, english, stops / n if n else 0.0)
        if reason is None:
            kept.append(p)
        elif dropped is not None:
            dropped.append((reason, p))
    return kept


def _pack_words(paragraphs: list[str], max_words: int, overlap_words: int) -> list[str]:
    chunks: list[str] = []
    buf: list[str] = []
    buf_words = 0

    def flush() -> None:
        nonlocal buf, buf_words
        # A heading belongs with the text under it, not at the end of the previous chunk.
        carry = [buf.pop()] if len(buf) > 1 and _HEADING.match(buf[-1]) else []
        if buf:
            chunks.append("\n\n".join(buf))
        buf = carry
        buf_words = sum(len(p.split()) for p in buf)

    for para in paragraphs:
        words = para.split()
        if buf_words + len(words) <= max_words:
            buf.append(para)
            buf_words += len(words)
            continue
        if buf:
            flush()
        if buf_words + len(words) <= max_words:
            buf.append(para)
            buf_words += len(words)
            continue
        if buf:  # only a carried heading: it leads the first window
            words = " ".join(buf).split() + words
            buf, buf_words = [], 0
        windows = _windows(words, max_words, overlap_words)
        chunks.extend(" ".join(w) for w in windows[:-1])
        buf, buf_words = [" ".join(windows[-1])], len(windows[-1])
    if buf:
        chunks.append("\n\n".join(buf))
    return chunks


def chunk_id(source: str, text: str, occurrence: int = 0) -> str:
    """Content hash of a chunk; `occurrence` tells apart identical chunks of one file."""
    h = hashlib.sha256(f"{source}\0{text}".encode())
    if occurrence:
        h.update(f"\0{occurrence}".encode())
    return h.hexdigest()[:32]


def chunk_file(
    f: SourceFile,
    max_words: int,
    overlap_words: int,
    drop_boilerplate: bool = False,
    dropped: list[tuple[str, str]] | None = None,
    *,
    language: str = AUTO,
    max_tokens: int = 200,
    overlap_tokens: int = 30,
) -> list[Chunk]:
    """The chunks of one file, in words or, for text without spaces (`language`, or `auto`: its script), in
    that language's tokens."""
    code = token_language(f.text, language)
    try:
        seg = segmenter(code) if code is not None else None
    except UserError as e:
        raise UserError(f"{f.rel} is written in {code!r}: {e}") from None
    texts = chunk_text(
        f.text,
        max_words,
        overlap_words,
        drop_boilerplate,
        dropped,
        seg=seg,
        max_tokens=max_tokens,
        overlap_tokens=overlap_tokens,
    )
    seen: dict[str, int] = {}
    out = []
    for i, text in enumerate(texts):
        n = seen.get(text, 0)
        seen[text] = n + 1
        tokens = seg.count(text) if seg is not None else None
        out.append(Chunk(chunk_id(f.rel, text, n), text, f.rel, i, code, tokens))
    return out


def corpus_fingerprint(root: Path, include: Sequence[str], chunking: str) -> str:
    """Hash of what an ingest reads: each file's path and bytes, each skipped file's path and reason (so
    that repairing one counts as a change), and the chunking parameters. Reads the files but chunks
    nothing. A corpus with no skipped file hashes as it did before skipped files were recorded by reason,
    so existing stores are not reported as changed."""
    return fingerprint_of(corpus_digests(root, include), chunking)


def fingerprint_of(digests: dict[str, str], chunking: str) -> str:
    """`corpus_fingerprint` from digests already taken (an ingest has just read every file)."""
    h = hashlib.sha256(f"chunking={chunking}\n".encode())
    for rel, digest in digests.items():
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()[:32]
