"""Cut corpus files into chunks: paragraph-aware packing up to `max_words`, with `overlap_words` of overlap
where a paragraph too long for one chunk is split.

Every chunk gets an id that hashes its file's relative path and its text, so ingesting the same corpus again
yields the same ids (nothing to add), an edited file yields new ids only for the chunks whose text changed,
and a crash halfway through writing is repaired by the next ingest (the ids say what is already stored).

Boilerplate. Web pages saved as text carry page furniture: link lists, menus, share bars, copyright
footers, reference lists. Such paragraphs are dense in topic words, so an embedding model finds them
"relevant" to everything, and the POV score (which rewards broad similarity) then promotes them: with
MiniLM on the BRICS sample, the notebook's algorithm puts a reference list into the final five for 3 of 30
question x POV-set pairs. With `drop_boilerplate` (default on) each paragraph is tested before packing, in
the spirit of jusText (Pomikálek 2011), by signals that prose does not produce:
- links: URLs and e-mail addresses make up >= 20% of its characters;
- menu: >= 3 ` | `-style separators, at least one per 10 words;
- footer: a short paragraph with `©` or "all rights reserved";
- reference entry: starts like a citation, `Surname, I. ... (2021)`;
- reference list: lines that start with a list marker (`1.`, `1)`, `[1]`) and carry a citation's mark (a
  year in parentheses followed by `.` or `,`, a DOI, a URL, `et al`, `pp. 12`, `Vol. 3`, `Retrieved`,
  `Accessed`, `ISBN`, a document number such as `2024/1252`) make up at least half of its lines. A
  numbered paragraph of prose that cites a source (`2. As the IEA (2024) notes, ...`) has no such mark;
- author bio: a paragraph of at most 100 words that opens like one (`About the author`, or a name followed
  by `is a/an/the`) and has two marks of one (`fellow`, `editor`, `previously`, `PhD`, `holds a`, `follow
  him`, an @handle, ...): "Fatih Birol is the executive director of the IEA, and he warned ..." has one;
- newsletter, cookie notice, site furniture: a paragraph of at most 80 words with two or more distinct cue
  phrases of page notices (`newsletter`, `inbox`, `subscribe`; `cookies`, `consent`, `privacy policy`,
  `accept all`; `contact us`, `frequently asked questions`, `back to top`, `password`, ...), named for the
  kind with the most. One cue is not enough: prose says "we use cookies" or "sign up to a partnership";
- word list: in an English file, fewer than 15% stopwords over >= 5 words (prose runs at 30-55%;
  menus and keyword lists below 10%). The English test stops this rule from emptying other languages.
Chunks left with fewer than 8 words are dropped too: such a chunk is a lone heading or label, carries
nothing worth retrieving, and (being short) sits close to the short POV statements in embedding space.

Reading the files is not done here: runner.spec.corpus is the one reader (ingest, the manifest and the
tiny-model builder share its skip rules and limits).

Every text rule here runs in linear time: no pattern can backtrack over the same characters twice, and the
anchored patterns with nested repetition (the citation, a bio's opening) are bounded in length, so a megabyte
token costs what a megabyte of prose does. The rules are cheap too, since every ingest chunks the whole
corpus again: the patterns that search a paragraph run only where a plain substring test finds what they
look for, and each paragraph's stopwords are counted once (the file's English test sums the counts).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.spec import SourceFile, corpus_digests

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

    @property
    def words(self) -> int:
        return len(self.text.split())

    def metadata(self) -> dict[str, str | int]:
        return {"source": self.source, "position": self.position, "words": self.words}


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, stripped; empty ones dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


# The e-mail branch starts only where a run of local-part characters starts: without the lookbehind it
# was tried again at every character of a long run, each try scanning to the run's end (quadratic).
_URL = re.compile(r"(?:https?://|www\.)\S+|(?<![\w.+-])[\w.+-]+@[\w-]+\.[\w.]+")
_SEPARATOR = re.compile(r"(?:^|\s)[|•·»](?=\s|$)")
# Bounded repeats: a surname, a few initials, then the year within 200 characters. Unbounded, a paragraph of
# initials made the lazy `.{0,200}?` rescan 200 characters for every initial.
_CITATION = re.compile(
    r"^[A-Z][\w'\-]{1,60}(?:-[A-Z][\w']{1,40})?,\s{1,5}"  # Surname, (or Double-Barrelled,)
    r"(?:[A-Z]\.\s{0,3}){1,8}"  # initials
    r".{0,200}?\((?:1[89]|20)\d\d[a-z]?\)"  # and the year in parentheses soon after
)
_WORD = re.compile(r"[A-Za-z']+")
_STOPWORD_TEXT = """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours yourself yourselves
    also may might must shall upon whose yet"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _stop_counts(text: str) -> tuple[int, int]:
    """(stopwords among its words, whitespace tokens): what stopword_density divides."""
    return sum(map(STOPWORDS.__contains__, _WORD.findall(text.lower()))), len(text.split())


def stopword_density(text: str) -> float:
    stops, tokens = _stop_counts(text)
    return stops / tokens if tokens else 0.0


_LIST_ITEM = re.compile(r"[ \t]{0,8}(?:\[\d{1,3}\]|\d{1,3}[.)])\s")
_REFERENCE_MARK = re.compile(
    r"\((?:1[89]|20)\d\d[a-z]?\)[.,]|\bdoi\b|https?://|\bet al\b|\bpp?\.\s?\d|\bvol\.\s?\d"
    r"|\bretrieved\b|\baccessed\b|\bisbn\b|\b(?:1[89]|20)\d\d/\d{1,6}\b",
    re.IGNORECASE,
)


def _reference_list(paragraph: str) -> bool:
    """At least half of the lines are numbered or bracketed entries with a citation's mark."""
    lines = [ln for ln in paragraph.split("\n") if ln.strip()]
    entries = sum(
        1
        for ln in lines
        if _LIST_ITEM.match(ln) and len(ln.split()) <= 80 and _REFERENCE_MARK.search(ln) is not None
    )
    return entries > 0 and 2 * entries >= len(lines)


_BIO_OPENING = re.compile(
    r"about the authors?\b|(?:[A-Z][\w'’.-]{0,30}\s){1,3}(?:is|was)\s(?:a|an|the)\s", re.IGNORECASE
)
_BIO_NAME = re.compile(r"(?:[A-Z][\w'’.-]{0,30}\s){1,3}(?:is|was)\s(?:a|an|the)\s")
_BIO_MARKS = re.compile(
    r"\b(?:fellow|professor|lecturer|researcher|analyst|economist|editor|correspondent|columnist|journalist"
    r"|reporter|writer|contributor|director|previously|ph\.?d|holds a|is the author of|writes (?:about|on)"
    r"|covers|follow (?:him|her|them))\b|(?<![\w@])@\w"
)


def _author_bio(paragraph: str, low: str) -> bool:
    if not (low.startswith("about the author") or _BIO_NAME.match(paragraph)):
        return False
    return len(set(_BIO_MARKS.findall(low))) >= 2


NOTICE_CUES: dict[str, tuple[str, ...]] = {
    "newsletter": (
        "newsletter",
        "newsletters",
        "subscribe",
        "unsubscribe",
        "sign up",
        "inbox",
        "delivered to your",
    ),
    "cookie notice": (
        "cookie",
        "cookies",
        "consent",
        "privacy policy",
        "cookie policy",
        "accept all",
        "manage preferences",
        "cookie settings",
        "terms of use",
        "terms of service",
    ),
    "site furniture": (
        "contact us",
        "about us",
        "careers",
        "frequently asked questions",
        "faq",
        "faqs",
        "was this article helpful",
        "was this page helpful",
        "back to top",
        "customer service",
        "password",
        "log in",
        "sign in",
        "subscription",
        "share this article",
        "print this page",
        "related articles",
    ),
}
"""Cue phrases of page notices, by the reason a paragraph made of them is dropped for."""
_NOTICE = re.compile(
    r"\b(?:"
    + "|".join(sorted((re.escape(c) for cs in NOTICE_CUES.values() for c in cs), key=len, reverse=True))
    + r")\b"
)
_NOTICE_KIND = {c: kind for kind, cues in NOTICE_CUES.items() for c in cues}
_NOTICE_HINTS = (
    "newsletter",
    "subscri",
    "sign ",
    "inbox",
    "cookie",
    "consent",
    "privacy",
    "accept all",
    "preferences",
    "terms of",
    "contact",
    "about us",
    "careers",
    "question",
    "faq",
    "helpful",
    "back to top",
    "customer",
    "password",
    "log in",
    "share this",
    "print this",
    "related",
)


def _notice(low: str) -> str | None:
    """The kind of page notice a short paragraph is, from two or more distinct cue phrases."""
    if not any(h in low for h in _NOTICE_HINTS):
        return None
    cues = set(_NOTICE.findall(low))
    if len(cues) < 2:
        return None
    kinds = [_NOTICE_KIND[c] for c in cues]
    return max(NOTICE_CUES, key=kinds.count)  # ties: the order of NOTICE_CUES


def boilerplate_reason(paragraph: str, english: bool = True, density: float | None = None) -> str | None:
    """Why a paragraph is page furniture rather than prose, or None (see the module docstring). `density`
    is its stopword_density when the caller has it already."""
    tokens = paragraph.split()
    if not tokens:
        return None
    if ("://" in paragraph or "www." in paragraph or "@" in paragraph) and sum(
        len(m) for m in _URL.findall(paragraph)
    ) >= 0.2 * len(paragraph):
        return "links"
    if any(c in paragraph for c in "|•·»"):
        seps = len(_SEPARATOR.findall(paragraph))
        if seps >= 3 and seps * 10 >= len(tokens):
            return "menu"
    low = paragraph.lower()
    if len(tokens) < 60 and ("©" in paragraph or "all rights reserved" in low):
        return "footer"
    if _CITATION.match(paragraph):
        return "reference entry"
    if paragraph.lstrip()[:1] in _LIST_STARTS and _reference_list(paragraph):
        return "reference list"
    if len(tokens) <= 100 and _author_bio(paragraph, low):
        return "author bio"
    if len(tokens) <= 80:
        kind = _notice(low)
        if kind is not None:
            return kind
    if english and len(tokens) >= 5:
        if density is None:
            density = stopword_density(paragraph)
        if density < 0.15:
            return "word list"
    return None


_LIST_STARTS = frozenset("[0123456789")


def is_boilerplate_chunk(text: str) -> bool:
    """Whether at least half of a chunk's words are in paragraphs `boilerplate_reason` flags: how retrieval
    counts the boilerplate each stage let through (the rules judge paragraphs; a chunk packs several)."""
    paragraphs = split_paragraphs(text)
    words = sum(len(p.split()) for p in paragraphs)
    if not words:
        return False
    english = stopword_density(text) >= 0.2
    flagged = sum(len(p.split()) for p in paragraphs if boilerplate_reason(p, english) is not None)
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
) -> list[str]:
    """Pack whole paragraphs into chunks of at most `max_words` words; a paragraph longer than that is cut
    into windows that repeat `overlap_words` words, and its last window is packed with what follows.
    With `drop_boilerplate`, `dropped` (when given) receives (reason, text) of every paragraph and short
    chunk left out."""
    if overlap_words >= max_words:
        raise ValueError("overlap_words must be smaller than max_words")
    paragraphs = split_paragraphs(text)
    if drop_boilerplate:
        # The file's stopword density is the paragraphs' counts summed: each paragraph is counted once.
        counts = [_stop_counts(p) for p in paragraphs]
        total = sum(t for _, t in counts)
        english = total > 0 and sum(s for s, _ in counts) / total >= 0.2
        kept = []
        for p, (stops, n) in zip(paragraphs, counts, strict=True):
            reason = boilerplate_reason(p, english, stops / n if n else 0.0)
            if reason is None:
                kept.append(p)
            elif dropped is not None:
                dropped.append((reason, p))
        paragraphs = kept
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
    if drop_boilerplate:
        if dropped is not None:
            dropped += [(SHORT_CHUNK, c) for c in chunks if len(c.split()) < MIN_CHUNK_WORDS]
        chunks = [c for c in chunks if len(c.split()) >= MIN_CHUNK_WORDS]
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
) -> list[Chunk]:
    seen: dict[str, int] = {}
    out = []
    for i, text in enumerate(chunk_text(f.text, max_words, overlap_words, drop_boilerplate, dropped)):
        n = seen.get(text, 0)
        seen[text] = n + 1
        out.append(Chunk(chunk_id(f.rel, text, n), text, f.rel, i))
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
