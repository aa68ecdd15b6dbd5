"""Ingest: bring a corpus's Chroma collection in line with its files, writing only the difference.

Chunk ids are content hashes (runner.retrieval.chunking), so an ingest compares the chunks it computes with
the ids stored and writes only the difference: adds, metadata updates, deletes. A second ingest of an
unchanged corpus writes nothing.

What did not change is neither cut nor read back. The collection's metadata keeps a manifest of the files
its chunks were cut from (`pov.files`: path -> [sha256 of the file's bytes, number of chunks]); a file
whose bytes hash as the manifest says keeps its stored chunks untouched, and only the chunks of new,
edited or removed files are fetched (by `source`) and compared with what cutting gives now. The manifest
also keeps what cutting a file reported (chunks longer than the embedder's window, paragraphs dropped as
boilerplate, by rule), so a report on an unchanged corpus is complete without cutting it. The manifest
is trusted only when the last ingest completed (a crash mid-write may have left part of a file's chunks)
with the same chunking parameters and the same chunker (`pov.chunker`, a hash of chunking.py, so a changed
rule reaches files that did not change; the boilerplate rules, language detection and segmenters count as
the chunker's code); otherwise every file is cut and every stored chunk compared, as
the first ingest does.

Nothing changed, nothing opened: an embedded store's collection metadata is read without chromadb
(runner.retrieval.chroma_state), and a corpus whose files hash as its manifest says, cut by the same chunker
for the same spec, is reported from it alone, without opening Chroma.

Crash safety: every chunk and embedding is computed before the first write; the fingerprint, the manifest
and the `complete` state are written last. A crash mid-write leaves state `writing` (retrieval warns), and
the next ingest finishes the job, since the ids say what is stored already.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.retrieval import boilerplate, chunking, language, segmenter, token_chunking
from runner.retrieval.chroma_state import CollectionState
from runner.retrieval.chunking import Chunk, chunk_file, fingerprint_of
from runner.retrieval.ingest_report import Dropped, IngestReport
from runner.retrieval.store import SCHEMA_VERSION, Store, chunking_key, maker
from runner.spec import CorpusText, Experiment, read_corpus

MANIFEST_KEY = "pov.files"
CHUNKER_KEY = "pov.chunker"
WINDOW_KEY = "pov.window"
"""The embedder's window in tokens, as the last ingest counted it (absent: it cannot count locally)."""


@dataclass(frozen=True)
class FileEntry:
    """One file of the manifest: what its bytes hashed to and what cutting them gave."""

    sha256: str
    chunks: int
    truncated: int = 0
    """Its chunks longer than the embedder's window."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Paragraphs and chunks the boilerplate filter left out, by rule."""

    def as_json(self) -> list[Any]:
        return [self.sha256, self.chunks, self.truncated, dict(sorted(self.dropped.items()))]

    @classmethod
    def from_json(cls, raw: Any) -> FileEntry:
        """Manifests written before the counts (`[sha256, chunks]`) read with zero counts."""
        sha, n, *rest = raw
        truncated = int(rest[0]) if rest else 0
        dropped = {str(k): int(v) for k, v in rest[1].items()} if len(rest) > 1 else {}
        return cls(str(sha), int(n), truncated, dropped)


@functools.lru_cache(maxsize=1)
def chunker_id() -> str:
    """Hash of the chunker's code: chunks cut by other code are never kept without cutting again."""
    try:
        modules = (chunking, boilerplate, language, segmenter, token_chunking)
        code = b"".join(Path(m.__file__).read_bytes() for m in modules if m.__file__)
    except (OSError, TypeError):  # no source to read (a frozen build): the package version stands in
        from importlib.metadata import PackageNotFoundError, version

        try:
            code = f"pov-runner {version('pov-runner')}".encode()
        except PackageNotFoundError:
            code = b"pov-runner unknown"
    return hashlib.sha256(code).hexdigest()[:16]


def trusted_manifest(meta: dict[str, Any], chunking_now: str) -> dict[str, FileEntry] | None:
    """The collection's file manifest (path -> sha256, chunks) if it can be trusted (see the module
    docstring), else None."""
    if (
        meta.get("pov.state") != "complete"
        or meta.get("pov.chunking") != chunking_now
        or meta.get(CHUNKER_KEY) != chunker_id()
    ):
        return None
    try:
        raw = json.loads(meta[MANIFEST_KEY])
        return {str(rel): FileEntry.from_json(entry) for rel, entry in raw.items()}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None  # a collection from before manifests, or one edited by hand


def _manifest_text(manifest: dict[str, FileEntry]) -> str:
    """Deterministic, so that an unchanged corpus compares equal and nothing is written."""
    return json.dumps({rel: v.as_json() for rel, v in sorted(manifest.items())}, separators=(",", ":"))


def _batches(seq: list[Any], size: int) -> list[list[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _same_metadata(stored: dict[str, Any], chunk: Chunk) -> bool:
    """Whether the stored metadata says what the chunk's does. Keys the chunk no longer has are ignored:
    Chroma's update merges metadata, so they could never be removed, and the chunk would be rewritten by
    every ingest."""
    return all(stored.get(k) == v for k, v in chunk.metadata().items())


def _file_counts(
    chunks: dict[str, Chunk], stored: dict[str, dict[str, Any]], kept: set[str]
) -> dict[str, int]:
    """Files added, updated, deleted, unchanged (files with chunks); `kept`: unchanged ones not cut at all."""
    new_by_file: dict[str, set[str]] = {}
    for c in chunks.values():
        new_by_file.setdefault(c.source, set()).add(c.id)
    old_by_file: dict[str, set[str]] = {}
    for cid, meta in stored.items():
        old_by_file.setdefault(str(meta.get("source")), set()).add(cid)
    counts = dict.fromkeys(("added", "updated", "deleted", "unchanged"), 0)
    counts["unchanged"] = len(kept)
    for f in new_by_file.keys() | old_by_file.keys():
        new, old = new_by_file.get(f), old_by_file.get(f)
        if old is None:
            counts["added"] += 1
        elif new is None:
            counts["deleted"] += 1
        elif new != old or not all(_same_metadata(stored[i], chunks[i]) for i in new):
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    return counts


def ingest(
    exp: Experiment,
    *,
    rebuild: bool = False,
    strict: bool = False,
    embedder: Any = None,
    show_dropped: bool = False,
) -> IngestReport:
    """Bring the collection in line with the corpus; see the module docstring. `show_dropped` cuts the
    unchanged files too (writing nothing for them), so that `dropped_items` lists every file's. When the
    collection's metadata, read without Chroma (runner.retrieval.chroma_state), says that nothing changed,
    Chroma is not opened."""
    spec = exp.spec
    corpus = read_corpus(spec.corpus.path, spec.corpus.include)
    if strict and corpus.skipped:
        raise UserError(
            "files that cannot be ingested (--strict):\n" + "\n".join(f"  {s}" for s in corpus.skipped)
        )
    if not corpus.files:
        why = f"; skipped: {', '.join(str(s) for s in corpus.skipped)}" if corpus.skipped else ""
        raise UserError(f"no ingestible files in {spec.corpus.path} matching {spec.corpus.include}{why}")

    store = Store(exp)
    state = None if rebuild or show_dropped else store.state()
    if state is not None:
        quick = _unchanged(exp, store, corpus, state, embedder)
        if quick is not None:
            return quick
    return _ingest(exp, store, corpus, rebuild, embedder, show_dropped)


def _unchanged(
    exp: Experiment, store: Store, corpus: CorpusText, state: CollectionState, embedder: Any
) -> IngestReport | None:
    """The report of an ingest that would write nothing, from the collection's metadata as read without
    Chroma (its manifest); None when anything may have changed (then `_ingest` opens it and decides)."""
    from runner.retrieval.embedders.base import build_embedder

    spec, meta = exp.spec, state.metadata
    store.check_embedder(meta, spec.embedder)
    store.check_maker(meta)
    known = trusted_manifest(meta, chunking_key(exp))
    if known is None or {f.rel: f.sha256 for f in corpus.files} != {r: e.sha256 for r, e in known.items()}:
        return None
    made = {
        **maker(exp),
        "pov.provider": spec.embedder.provider,
        "pov.model": spec.embedder.model,
        "pov.schema": SCHEMA_VERSION,
        "pov.fingerprint": fingerprint_of(corpus.digests(), chunking_key(exp)),
    }
    kept_chunks = sum(e.chunks for e in known.values())
    if kept_chunks == 0 or any(meta.get(k) != v for k, v in made.items()):
        return None
    report = IngestReport(spec.corpus.collection, store.location, skipped=corpus.skipped)
    report.chunks = {"added": 0, "updated": 0, "deleted": 0, "unchanged": kept_chunks}
    report.files = _file_counts({}, {}, {rel for rel, e in known.items() if e.chunks})
    report.no_chunks = [f.rel for f in corpus.files if known[f.rel].chunks == 0]
    _sum_manifest(report, known, meta.get(WINDOW_KEY))
    report.embedding = (embedder or build_embedder(spec.embedder, exp.state_dir)).stats()
    return report


def _sum_manifest(report: IngestReport, manifest: dict[str, FileEntry], window: Any) -> None:
    """The report's corpus-wide counts, from the manifest of every file."""
    report.window = int(window) if window is not None else None
    report.truncated = sum(e.truncated for e in manifest.values())
    for e in manifest.values():
        for reason, n in e.dropped.items():
            report.dropped[reason] = report.dropped.get(reason, 0) + n


def _ingest(
    exp: Experiment,
    store: Store,
    corpus: CorpusText,
    rebuild: bool,
    embedder: Any,
    show_dropped: bool,
) -> IngestReport:
    """Ingest with the collection open (see the module docstring)."""
    from runner.retrieval.embedders.base import CachedEmbedder, build_embedder

    spec = exp.spec
    report = IngestReport(spec.corpus.collection, store.location, skipped=corpus.skipped)
    with store.answering():
        col = None if rebuild else store.collection()
        meta = dict(col.metadata or {}) if col is not None else {}
        if col is not None:
            store.check_embedder(meta, spec.embedder)
            store.check_maker(meta)
        known = trusted_manifest(meta, chunking_key(exp)) if col is not None else None
        # Unchanged files: as the manifest says, so neither cut nor fetched.
        kept = {f.rel for f in corpus.files if known and f.rel in known and known[f.rel].sha256 == f.sha256}
        if col is None:
            stored: dict[str, dict[str, Any]] = {}
        elif known is None:
            stored = store.stored(col)
        else:  # edited, removed or now skipped files: only their chunks are compared
            stored = store.stored(col, sorted(set(known) - kept))

    ch = spec.corpus.chunking
    chunks: dict[str, Chunk] = {}
    manifest: dict[str, FileEntry] = {}
    cut_by_file: dict[str, list[Chunk]] = {}
    for f in corpus.files:
        if f.rel in kept and known is not None and not show_dropped:
            manifest[f.rel] = known[f.rel]
        else:
            lost: list[tuple[str, str]] = []
            got = chunk_file(
                f,
                ch.max_words,
                ch.overlap_words,
                ch.drop_boilerplate,
                lost,
                language=spec.corpus.language,
                max_tokens=ch.max_tokens,
                overlap_tokens=ch.overlap_tokens,
            )
            report.dropped_items += [Dropped(f.rel, reason, text) for reason, text in lost]
            if f.rel in kept and known is not None:  # cut only to list what it dropped
                manifest[f.rel] = known[f.rel]
            else:
                chunks.update((c.id, c) for c in got)
                cut_by_file[f.rel] = got
                manifest[f.rel] = FileEntry(f.sha256, len(got), 0, dict(Counter(r for r, _ in lost)))
        if manifest[f.rel].chunks == 0:
            report.no_chunks.append(f.rel)
    kept_chunks = sum(manifest[rel].chunks for rel in kept)
    if not chunks and not kept_chunks:
        raise UserError(f"no chunks in {spec.corpus.path}: every paragraph was empty or boilerplate")
    fingerprint = fingerprint_of(corpus.digests(), chunking_key(exp))  # the files were just read

    new_ids = [i for i in chunks if i not in stored]
    gone_ids = [i for i in stored if i not in chunks]
    compared = [i for i in chunks if i in stored]
    changed = [i for i in compared if not _same_metadata(stored[i], chunks[i])]
    emb = embedder or build_embedder(spec.embedder, exp.state_dir)
    vectors = emb.embed([chunks[i].text for i in new_ids], "document") if new_ids else None
    dim = int(vectors.shape[1]) if vectors is not None else meta.get("pov.dim")
    if col is not None and vectors is not None:
        store.check_embedder(meta, spec.embedder, dim)
    report.chunks = {
        "added": len(new_ids),
        "updated": len(changed),
        "deleted": len(gone_ids),
        "unchanged": len(compared) - len(changed) + kept_chunks,
    }
    report.files = _file_counts(chunks, stored, {rel for rel in kept if manifest[rel].chunks})
    window = meta.get(WINDOW_KEY) if known is not None else None
    if isinstance(emb, CachedEmbedder) and cut_by_file:  # counted once per text, then read from the cache
        counted = emb.token_counts([c.text for c in chunks.values()])
        if counted is not None:
            lengths, window = dict(zip(chunks, counted[0], strict=True)), counted[1]
            for rel, got in cut_by_file.items():
                over = sum(lengths[c.id] > window for c in got)
                manifest[rel] = FileEntry(manifest[rel].sha256, len(got), over, manifest[rel].dropped)
    _sum_manifest(report, manifest, window)
    report.embedding = emb.stats()

    final_meta = {
        "pov.provider": spec.embedder.provider,
        "pov.model": spec.embedder.model,
        "pov.dim": dim,
        "pov.schema": SCHEMA_VERSION,
        CHUNKER_KEY: chunker_id(),
        **({WINDOW_KEY: report.window} if report.window is not None else {}),
        **maker(exp),
    }
    done = {**final_meta, "pov.fingerprint": fingerprint, MANIFEST_KEY: _manifest_text(manifest)}
    done["pov.state"] = "complete"
    with store.answering():
        if col is not None and not (new_ids or gone_ids or changed):
            if any(meta.get(k) != v for k, v in done.items()):
                col.modify(metadata=done)
            return report
        _write(store, col, rebuild, final_meta, meta, done, chunks, vectors, new_ids, changed, gone_ids)
    return report


def _write(
    store: Store,
    col: Any,
    rebuild: bool,
    final_meta: dict[str, Any],
    meta: dict[str, Any],
    done: dict[str, Any],
    chunks: dict[str, Chunk],
    vectors: Any,
    new_ids: list[str],
    changed: list[str],
    gone_ids: list[str],
) -> None:
    """The writes, between state `writing` and the final metadata (`done`)."""
    client = store.client
    if rebuild and store.collection() is not None:
        client.delete_collection(store.name)
        col = None
    if col is None:
        col = client.create_collection(
            store.name,
            configuration={"hnsw": {"space": "cosine"}},
            metadata={**final_meta, "pov.state": "writing"},
            embedding_function=None,
        )
    else:
        col.modify(
            metadata={
                **final_meta,
                "pov.fingerprint": meta.get("pov.fingerprint", ""),
                "pov.state": "writing",
            }
        )
    size = client.get_max_batch_size()
    for part in _batches(list(range(len(new_ids))), size):
        ids = [new_ids[i] for i in part]
        col.upsert(
            ids=ids,
            embeddings=vectors[part[0] : part[-1] + 1],
            documents=[chunks[i].text for i in ids],
            metadatas=[chunks[i].metadata() for i in ids],
        )
    for ids in _batches(changed, size):
        col.update(ids=list(ids), metadatas=[chunks[i].metadata() for i in ids])
    for ids in _batches(gone_ids, size):
        col.delete(ids=list(ids))
    col.modify(metadata=done)
