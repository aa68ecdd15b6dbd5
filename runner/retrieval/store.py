"""The Chroma store: ingest a corpus into a collection, and open it for queries.

Where: an embedded `PersistentClient` under `corpus.persist_dir` (default `<project>/.pov/chroma`, which
git ignores), or an `HttpClient` when `corpus.chroma_url` names a `chroma run` server. Collections use the
cosine space and hold our own vectors (no Chroma embedding function).

The collection's metadata records what made it: embedder provider, model and dimension (querying with
another embedder is a UserError), the chunking parameters, a fingerprint of the corpus files, and a state
(`writing` during an ingest's writes, `complete` after). The chunks' own metadata (`source` = file path)
is the manifest of file -> chunk ids, and chunk ids are content hashes, so an ingest compares the chunks
it computed with the ids stored and writes only the difference: adds, metadata updates, deletes.

Crash safety: every chunk and embedding is computed before the first write; the fingerprint and the
`complete` state are written last. A crash mid-write leaves state `writing` (retrieval warns), and the
next ingest finishes the job, since the ids say what is stored already.

One collection, one corpus: the metadata also names the spec that last ingested and its corpus (path,
include patterns). Another spec whose corpus or chunking differs is refused before any write, since its
ingest would delete the first one's chunks; a collection without these names (older versions) is adopted.

A `chroma run` server that does not answer is one clear message: `ChromaDown`, a UserError, before a run,
and RunAborted mid-run (`Store.answering`). Chroma's HTTP client has no timeout of its own; the Store gives
it one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from runner.errors import RunAborted, UserError
from runner.redaction import redact
from runner.retrieval.chunking import Chunk, chunk_file, corpus_fingerprint, fingerprint_of
from runner.spec import Embedder as EmbedderSpec
from runner.spec import Experiment, Skipped, portable, read_corpus

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 120.0
"""A Chroma server's answer to one request: an ingest's largest upsert takes seconds, not minutes."""
CORPUS_KEYS = ("pov.corpus", "pov.include", "pov.chunking")
"""What makes a collection's chunks: the same keys with other values are another corpus."""


class ChromaDown(UserError):
    """The Chroma server does not answer (`reason` says how); a RunAborted instead once a run is under way."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(redact(message))
        self.reason = redact(reason)


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
    dropped: list[Dropped] = field(default_factory=list)
    """Paragraphs left out as boilerplate and chunks under 8 words (with `drop_boilerplate`), in file order."""
    truncated: int = 0
    """Chunks longer than the embedder's window: only their start is embedded."""
    window: int | None = None
    """The embedder's window in tokens, where it can count them locally (None: unknown)."""


@dataclass(frozen=True)
class Dropped:
    source: str
    """The file, relative to the corpus folder."""
    reason: str
    """The rule that dropped it (runner.retrieval.chunking)."""
    text: str


def truncation_warning(report: IngestReport, model: str) -> str:
    """What `pov ingest` and `pov run` say when chunks are longer than the embedder reads."""
    total = (
        report.chunks.get("added", 0) + report.chunks.get("unchanged", 0) + report.chunks.get("updated", 0)
    )
    return (
        f"{report.truncated} of {total} chunks are longer than {model}'s window of {report.window} tokens: "
        "only their first tokens are embedded, the rest cannot make them found; lower "
        "corpus.chunking.max_words"
    )


def _settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def chunking_key(exp: Experiment) -> str:
    return json.dumps(exp.spec.corpus.chunking.model_dump(mode="json"), sort_keys=True)


def maker(exp: Experiment) -> dict[str, str]:
    """The collection metadata naming the spec and corpus of an ingest (paths relative to the project, so
    that another checkout of it is the same corpus)."""
    corpus = exp.spec.corpus
    return {
        "pov.spec": exp.spec.name,
        "pov.spec_path": str(portable(str(exp.path), exp.root)),
        "pov.corpus": str(portable(str(corpus.path), exp.root)),
        "pov.include": json.dumps(list(corpus.include)),
        "pov.chunking": chunking_key(exp),
    }


def _reason(e: BaseException) -> str:
    return f"{e.__class__.__name__}: {e}"[:300]


class Store:
    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        corpus = exp.spec.corpus
        self.name = corpus.collection
        self.url = corpus.chroma_url
        self.path = Path(corpus.persist_dir) if corpus.persist_dir else exp.state_dir / "chroma"
        self._client: Any = None

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    @property
    def client(self) -> Any:
        if self._client is None:
            import chromadb

            if self.url:
                self._client = self._connect(self.url)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(self.path), settings=_settings())
        return self._client

    def _connect(self, url: str) -> Any:
        import chromadb
        import httpx

        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UserError(f"corpus.chroma_url {redact(url)!r}: expected http://host:port")
        try:
            # Chroma's client would wait for ever on a host that does not answer: ask once, briefly, first.
            httpx.get(f"{u.scheme}://{u.netloc}/api/v2/heartbeat", timeout=CONNECT_TIMEOUT_S)
            client = chromadb.HttpClient(
                host=u.hostname, port=u.port or 8000, ssl=u.scheme == "https", settings=_settings()
            )
            client.heartbeat()
        except Exception as e:
            raise ChromaDown(
                f"cannot reach the Chroma server at {url} ({_reason(e)}): start one with "
                "`chroma run --path DIR --port N`, or unset corpus.chroma_url to use the embedded store",
                _reason(e),
            ) from None
        # chromadb 1.x keeps its httpx session here, made with timeout=None; without it, calls are unbounded.
        session = getattr(getattr(client, "_server", None), "_session", None)
        if isinstance(session, httpx.Client):
            session.timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return client

    @contextmanager
    def answering(self, *, mid_run: bool = False) -> Iterator[None]:
        """A Chroma server that stops answering inside this block is ChromaDown (a UserError: nothing has
        started), or with `mid_run` a RunAborted saying how to resume."""
        import httpx

        try:
            yield
        except (ChromaDown, httpx.TransportError) as e:
            if not self.url:
                raise
            reason = e.reason if isinstance(e, ChromaDown) else _reason(e)
            if mid_run:
                raise RunAborted(
                    redact(
                        f"Chroma at {self.url} stopped answering during retrieval ({reason}); start "
                        "`chroma run` again (or unset corpus.chroma_url) and run the same command to resume"
                    )
                ) from None
            if isinstance(e, ChromaDown):
                raise
            raise ChromaDown(
                f"Chroma at {self.url} is not answering: {reason}; start `chroma run` or unset "
                "corpus.chroma_url",
                reason,
            ) from None

    def check_maker(self, meta: dict[str, Any]) -> None:
        """UserError when another spec made the collection from another corpus or chunking: this ingest
        would delete its chunks. Another spec over the same corpus shares it; the spec that made it may
        change its own corpus; a collection that names no spec is adopted."""
        made_by, mine = meta.get("pov.spec"), maker(self.exp)
        if (
            made_by is None
            or made_by == mine["pov.spec"]
            or meta.get("pov.spec_path") == mine["pov.spec_path"]
        ):
            return
        differs = [k.removeprefix("pov.") for k in CORPUS_KEYS if meta.get(k) != mine[k]]
        if not differs:
            return
        theirs = ", ".join(f"{k.removeprefix('pov.')} {meta.get(k)}" for k in CORPUS_KEYS)
        raise UserError(
            redact(
                f"collection {self.name!r} at {self.location} was made by spec {made_by!r} "
                f"({meta.get('pov.spec_path')}: {theirs}); this spec {self.exp.spec.name!r} differs in "
                f"{' and '.join(differs)}, and its ingest would delete that spec's chunks: give this spec its "
                f"own corpus.collection, or delete the collection with `pov ingest {self.exp.path} --rebuild` "
                f"(then {made_by!r} needs its own collection too)"
            )
        )

    def collection(self) -> Any | None:
        from chromadb.errors import NotFoundError

        try:
            return self.client.get_collection(self.name, embedding_function=None)
        except (NotFoundError, ValueError):
            return None

    def metadata(self) -> dict[str, Any]:
        col = self.collection()
        return dict(col.metadata or {}) if col is not None else {}

    def _describe(self, meta: dict[str, Any]) -> str:
        return f"{meta.get('pov.provider')}/{meta.get('pov.model')} (dimension {meta.get('pov.dim')})"

    def check_embedder(self, meta: dict[str, Any], spec: EmbedderSpec, dim: int | None = None) -> None:
        """UserError unless the collection was built by this embedder (and dimension, when known)."""
        if "pov.model" not in meta:
            raise UserError(
                f"collection {self.name!r} at {self.location} was not made by `pov ingest` "
                "(no embedder recorded): choose another corpus.collection, or `pov ingest --rebuild`"
            )
        stored = (meta.get("pov.provider"), meta.get("pov.model"))
        if stored != (spec.provider, spec.model) or (dim is not None and meta.get("pov.dim") != dim):
            got = f"{spec.provider}/{spec.model}" + (f" (dimension {dim})" if dim is not None else "")
            raise UserError(
                f"collection {self.name!r} at {self.location} holds embeddings of "
                f"{self._describe(meta)}, but the spec's embedder is {got}: use another "
                "corpus.collection, or rebuild it with `pov ingest SPEC --rebuild`"
            )

    def open_for_query(self, spec: EmbedderSpec) -> tuple[Any, list[str]]:
        """The collection, checked against the embedder, and warnings about its freshness."""
        col = self.collection()
        if col is None or col.count() == 0:
            raise UserError(
                f"collection {self.name!r} at {self.location} is empty or missing: "
                f"run `pov ingest {self.exp.path}` first"
            )
        meta = dict(col.metadata or {})
        self.check_embedder(meta, spec)
        warnings = []
        if meta.get("pov.state") != "complete":
            warnings.append(
                f"the last ingest into {self.name!r} did not finish: run `pov ingest {self.exp.path}`"
            )
        else:
            corpus = self.exp.spec.corpus
            now = corpus_fingerprint(corpus.path, corpus.include, chunking_key(self.exp))
            if now != meta.get("pov.fingerprint"):
                warnings.append(
                    f"the corpus or its chunking changed since the last ingest into {self.name!r}; "
                    f"results come from the stored chunks: run `pov ingest {self.exp.path}`"
                )
        return col, warnings

    def stored(self, col: Any) -> dict[str, dict[str, Any]]:
        """id -> chunk metadata of everything in the collection."""
        out: dict[str, dict[str, Any]] = {}
        page = self.client.get_max_batch_size()
        offset = 0
        while True:
            got = col.get(include=["metadatas"], limit=page, offset=offset)
            for cid, meta in zip(got["ids"], got["metadatas"] or [{}] * len(got["ids"]), strict=True):
                out[cid] = dict(meta or {})
            if len(got["ids"]) < page:
                return out
            offset += page


def _batches(seq: list[Any], size: int) -> list[list[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _file_counts(chunks: dict[str, Chunk], stored: dict[str, dict[str, Any]]) -> dict[str, int]:
    new_by_file: dict[str, set[str]] = {}
    for c in chunks.values():
        new_by_file.setdefault(c.source, set()).add(c.id)
    old_by_file: dict[str, set[str]] = {}
    for cid, meta in stored.items():
        old_by_file.setdefault(str(meta.get("source")), set()).add(cid)
    counts = dict.fromkeys(("added", "updated", "deleted", "unchanged"), 0)
    for f in new_by_file.keys() | old_by_file.keys():
        new, old = new_by_file.get(f), old_by_file.get(f)
        if old is None:
            counts["added"] += 1
        elif new is None:
            counts["deleted"] += 1
        elif new != old or any(stored[i] != chunks[i].metadata() for i in new):
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    return counts


def ingest(
    exp: Experiment, *, rebuild: bool = False, strict: bool = False, embedder: Any = None
) -> IngestReport:
    """Bring the collection in line with the corpus; see the module docstring."""
    from runner.retrieval.embedders.base import CachedEmbedder, build_embedder

    spec = exp.spec
    corpus = read_corpus(spec.corpus.path, spec.corpus.include)
    if strict and corpus.skipped:
        raise UserError(
            "files that cannot be ingested (--strict):\n" + "\n".join(f"  {s}" for s in corpus.skipped)
        )
    if not corpus.files:
        why = f"; skipped: {', '.join(str(s) for s in corpus.skipped)}" if corpus.skipped else ""
        raise UserError(f"no ingestible files in {spec.corpus.path} matching {spec.corpus.include}{why}")
    ch = spec.corpus.chunking
    chunks: dict[str, Chunk] = {}
    no_chunks = []
    dropped: list[Dropped] = []
    for f in corpus.files:
        lost: list[tuple[str, str]] = []
        got = chunk_file(f, ch.max_words, ch.overlap_words, ch.drop_boilerplate, lost)
        dropped += [Dropped(f.rel, reason, text) for reason, text in lost]
        no_chunks += [] if got else [f.rel]
        chunks.update((c.id, c) for c in got)
    if not chunks:
        raise UserError(f"no chunks in {spec.corpus.path}: every paragraph was empty or boilerplate")
    fingerprint = fingerprint_of(corpus.digests(), chunking_key(exp))  # the files were just read

    store = Store(exp)
    report = IngestReport(
        spec.corpus.collection, store.location, skipped=corpus.skipped, no_chunks=no_chunks, dropped=dropped
    )
    with store.answering():
        col = store.collection()
        meta = dict(col.metadata or {}) if col is not None else {}
        if col is not None and not rebuild:
            store.check_embedder(meta, spec.embedder)
            store.check_maker(meta)
        stored = store.stored(col) if col is not None and not rebuild else {}

    new_ids = [i for i in chunks if i not in stored]
    gone_ids = [i for i in stored if i not in chunks]
    kept = [i for i in chunks if i in stored]
    changed = [i for i in kept if stored[i] != chunks[i].metadata()]
    emb = embedder or build_embedder(spec.embedder, exp.state_dir)
    vectors = emb.embed([chunks[i].text for i in new_ids], "document") if new_ids else None
    dim = int(vectors.shape[1]) if vectors is not None else meta.get("pov.dim")
    if col is not None and not rebuild and vectors is not None:
        store.check_embedder(meta, spec.embedder, dim)
    report.chunks = {
        "added": len(new_ids),
        "updated": len(changed),
        "deleted": len(gone_ids),
        "unchanged": len(kept) - len(changed),
    }
    report.files = _file_counts(chunks, stored)
    if isinstance(emb, CachedEmbedder):  # counted once per text, then read from the embedding cache
        counted = emb.token_counts([c.text for c in chunks.values()])
        if counted is not None:
            report.window = counted[1]
            report.truncated = sum(n > counted[1] for n in counted[0])
    report.embedding = emb.stats()

    final_meta = {
        "pov.provider": spec.embedder.provider,
        "pov.model": spec.embedder.model,
        "pov.dim": dim,
        "pov.schema": SCHEMA_VERSION,
        **maker(exp),
    }
    with store.answering():
        if col is not None and not rebuild and not (new_ids or gone_ids or changed):
            done = {**final_meta, "pov.fingerprint": fingerprint, "pov.state": "complete"}
            if any(meta.get(k) != v for k, v in done.items()):
                col.modify(metadata=done)
            return report
        client = store.client
        if col is not None and rebuild:
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
                embeddings=vectors[part[0] : part[-1] + 1],  # type: ignore[index]
                documents=[chunks[i].text for i in ids],
                metadatas=[chunks[i].metadata() for i in ids],
            )
        for ids in _batches(changed, size):
            col.update(ids=list(ids), metadatas=[chunks[i].metadata() for i in ids])
        for ids in _batches(gone_ids, size):
            col.delete(ids=list(ids))
        col.modify(metadata={**final_meta, "pov.fingerprint": fingerprint, "pov.state": "complete"})
    return report
