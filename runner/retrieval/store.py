"""The Chroma store: ingest a corpus into a collection, and query it.

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
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from runner.errors import UserError
from runner.retrieval.chunking import Chunk, Skipped, chunk_file, corpus_fingerprint, read_corpus
from runner.spec import Embedder as EmbedderSpec
from runner.spec import Experiment

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


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


@dataclass
class Hits:
    """One query's nearest chunks, nearest first."""

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray
    scores: list[float]
    """Cosine similarity, 1 - Chroma's cosine distance."""


def _settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def chunking_key(exp: Experiment) -> str:
    return json.dumps(exp.spec.corpus.chunking.model_dump(mode="json"), sort_keys=True)


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
                u = urlparse(self.url)
                if u.scheme not in ("http", "https") or not u.hostname:
                    raise UserError(f"corpus.chroma_url {self.url!r}: expected http://host:port")
                try:
                    self._client = chromadb.HttpClient(
                        host=u.hostname, port=u.port or 8000, ssl=u.scheme == "https", settings=_settings()
                    )
                    self._client.heartbeat()
                except Exception as e:
                    raise UserError(
                        f"cannot reach the Chroma server at {self.url} ({e.__class__.__name__}): "
                        "start one with `chroma run --path DIR --port N`, or unset "
                        "corpus.chroma_url to use the embedded store"
                    ) from None
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(self.path), settings=_settings())
        return self._client

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

    def query(self, col: Any, embeddings: np.ndarray, n: int) -> list[Hits]:
        n = min(n, col.count())
        if len(embeddings) == 0 or n < 1:
            return []
        dim = (col.metadata or {}).get("pov.dim")
        if dim is not None and embeddings.shape[1] != dim:
            raise UserError(
                f"query embeddings have dimension {embeddings.shape[1]}, collection {self.name!r} "
                f"holds dimension {dim}: the embedder changed; `pov ingest SPEC --rebuild`"
            )
        res = col.query(
            query_embeddings=np.asarray(embeddings, dtype=np.float32),
            n_results=n,
            include=["embeddings", "documents", "distances"],
        )
        out = []
        for ids, docs, embs, dists in zip(
            res["ids"], res["documents"], res["embeddings"], res["distances"], strict=True
        ):
            # Equal distances come back in an order Chroma does not promise; the id makes it deterministic.
            order = sorted(range(len(ids)), key=lambda i: (dists[i], ids[i]))
            out.append(
                Hits(
                    [ids[i] for i in order],
                    [docs[i] for i in order],
                    np.asarray(embs, dtype=np.float32)[order],
                    [1.0 - float(dists[i]) for i in order],
                )
            )
        return out

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
    from runner.retrieval.embedders.base import build_embedder

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
    for f in corpus.files:
        got = chunk_file(f, ch.max_words, ch.overlap_words, ch.drop_boilerplate)
        no_chunks += [] if got else [f.rel]
        chunks.update((c.id, c) for c in got)
    if not chunks:
        raise UserError(f"no chunks in {spec.corpus.path}: every paragraph was empty or boilerplate")
    fingerprint = corpus_fingerprint(spec.corpus.path, spec.corpus.include, chunking_key(exp))

    store = Store(exp)
    report = IngestReport(spec.corpus.collection, store.location, skipped=corpus.skipped, no_chunks=no_chunks)
    col = store.collection()
    meta = dict(col.metadata or {}) if col is not None else {}
    if col is not None and not rebuild:
        store.check_embedder(meta, spec.embedder)
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
    report.embedding = emb.stats()

    final_meta = {
        "pov.provider": spec.embedder.provider,
        "pov.model": spec.embedder.model,
        "pov.dim": dim,
        "pov.chunking": chunking_key(exp),
        "pov.schema": SCHEMA_VERSION,
    }
    if col is not None and not rebuild and not (new_ids or gone_ids or changed):
        if meta.get("pov.fingerprint") != fingerprint or meta.get("pov.state") != "complete":
            col.modify(metadata={**final_meta, "pov.fingerprint": fingerprint, "pov.state": "complete"})
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
