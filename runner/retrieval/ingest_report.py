"""What an ingest reports: chunks and files added, updated, deleted and unchanged, what the boilerplate
filter dropped, and chunks longer than the embedder's window (runner.retrieval.indexing fills it in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.spec import Skipped


@dataclass(frozen=True)
class Dropped:
    source: str
    """The file, relative to the corpus folder."""
    reason: str
    """The rule that dropped it (runner.retrieval.boilerplate)."""
    text: str


@dataclass
class IngestReport:
    collection: str
    location: str
    chunks: dict[str, int] = field(default_factory=dict)
    """Counts of chunks `added`, `updated` (metadata only), `deleted`, `unchanged`."""
    files: dict[str, int] = field(default_factory=dict)
    """Counts of files `added`, `updated`, `deleted`, `unchanged` (by their chunks)."""
    skipped: list[Skipped] = field(default_factory=list)
    no_chunks: list[str] = field(default_factory=list)
    """Files read fine but left with no chunk (all boilerplate)."""
    embedding: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    """Paragraphs and chunks under 8 words left out by the boilerplate filter (`drop_boilerplate`), by rule,
    over the whole corpus."""
    dropped_items: list[Dropped] = field(default_factory=list)
    """Each of them, in file order: every file's with `show_dropped`, else only those of the files cut now."""
    truncated: int = 0
    """Chunks longer than the embedder's window: only their start is embedded."""
    window: int | None = None
    """The embedder's window in tokens, where it can count them locally (None: unknown)."""

    @property
    def total_chunks(self) -> int:
        return sum(self.chunks.get(k, 0) for k in ("added", "updated", "unchanged"))


def truncation_warning(report: IngestReport, model: str) -> str:
    """What `pov ingest` and `pov run` say when chunks are longer than the embedder reads."""
    return (
        f"{report.truncated} of {report.total_chunks} chunks are longer than {model}'s window of "
        f"{report.window} tokens: only their first tokens are embedded, the rest cannot make them found; "
        "lower corpus.chunking.max_words (max_tokens for text without spaces)"
    )
