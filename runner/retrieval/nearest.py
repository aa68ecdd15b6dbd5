"""Stage 1 of retrieval: a question's nearest chunks in the Chroma collection, and the same answers kept
between runs for as long as the collection has not been written (runner.retrieval.chroma_state).

`nearest` asks Chroma. `cached_nearest` asks the hit cache first, keyed by the collection's token (which
changes with every write to it), the query vector's bytes and how many chunks were asked for, and Chroma only
for what it lacks, so that a run whose questions were asked before opens no Chroma client at all (and imports no
chromadb: half a second of a warm `pov run`). The cache keeps each chunk's text and vector once per token,
however many questions it is near, and only the rows of the collection's current token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.errors import UserError
from runner.retrieval.chroma_state import CollectionState
from runner.retrieval.sqlite_store import SqliteStore


@dataclass
class Hits:
    """One query's nearest chunks, nearest first."""

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray
    scores: list[float]
    """Cosine similarity, 1 - Chroma's cosine distance."""


QUERY_BATCH = 64
"""Questions per Chroma query: its answer is built in Python objects (tens of bytes a number) before numpy
sees it, so one query for 1,000 questions held them all at once."""
GET_BATCH = 1_000
"""Chunk ids per `get`: well under SQLite's limit on bound variables."""


def nearest(col: Any, embeddings: np.ndarray, n: int) -> list[Hits]:
    """Stage 1: the `n` chunks of the collection nearest to each embedding.

    The queries ask for ids and distances only; each chunk's vector and text are then fetched once, however
    many questions it is near: with 1,000 questions x 15 chunks, most hits are chunks already seen, and
    Chroma's per-hit copies of 384 numbers made up most of a warm retrieve's time and peak memory."""
    n = min(n, col.count())
    if len(embeddings) == 0 or n < 1:
        return []
    _check_dim(embeddings, (col.metadata or {}).get("pov.dim"), col.name)
    queries = np.asarray(embeddings, dtype=np.float32)
    ranked: list[tuple[list[str], list[float]]] = []
    for start in range(0, len(queries), QUERY_BATCH):
        res = col.query(
            query_embeddings=queries[start : start + QUERY_BATCH], n_results=n, include=["distances"]
        )
        for ids, dists in zip(res["ids"], res["distances"], strict=True):
            # Equal distances come back in an order Chroma does not promise; the id makes it deterministic.
            order = sorted(range(len(ids)), key=lambda i: (dists[i], ids[i]))
            ranked.append(([ids[i] for i in order], [1.0 - float(dists[i]) for i in order]))
    unique = list(dict.fromkeys(i for ids, _ in ranked for i in ids))
    vectors: dict[str, np.ndarray] = {}
    texts: dict[str, str] = {}
    for start in range(0, len(unique), GET_BATCH):
        got = col.get(ids=unique[start : start + GET_BATCH], include=["embeddings", "documents"])
        block = np.asarray(got["embeddings"], dtype=np.float32)
        for row, (cid, doc) in enumerate(zip(got["ids"], got["documents"], strict=True)):
            vectors[cid], texts[cid] = block[row], doc
    return [
        Hits(ids, [texts[i] for i in ids], np.stack([vectors[i] for i in ids]), scores)
        for ids, scores in ranked
    ]


_HITS = """
CREATE TABLE IF NOT EXISTS hits (
    collection TEXT NOT NULL,
    token TEXT NOT NULL,
    key TEXT NOT NULL,
    ids TEXT NOT NULL,
    scores TEXT NOT NULL,
    PRIMARY KEY (collection, token, key)
) WITHOUT ROWID
"""
_CHUNKS = """
CREATE TABLE IF NOT EXISTS chunks (
    collection TEXT NOT NULL,
    token TEXT NOT NULL,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    vec BLOB NOT NULL,
    PRIMARY KEY (collection, token, id)
) WITHOUT ROWID
"""


class HitCache(SqliteStore):
    """Stage-1 answers by (collection, token, key), and the chunks they name. `collection` names the store
    and the collection (two projects' stores never share rows)."""

    schemas = (_HITS, _CHUNKS)

    def hits(
        self, collection: str, token: str, keys: Sequence[str]
    ) -> dict[str, tuple[list[str], list[float]]]:
        rows = self.select_in(
            "SELECT key, ids, scores FROM hits WHERE collection=? AND token=? AND key IN ({marks})",
            (collection, token),
            keys,
        )
        return {key: (json.loads(ids), json.loads(scores)) for key, ids, scores in rows}

    def chunks(self, collection: str, token: str, ids: Sequence[str]) -> dict[str, tuple[str, np.ndarray]]:
        rows = self.select_in(
            "SELECT id, text, vec FROM chunks WHERE collection=? AND token=? AND id IN ({marks})",
            (collection, token),
            ids,
        )
        return {cid: (text, np.frombuffer(vec, dtype=np.float32)) for cid, text, vec in rows}

    def put(self, collection: str, token: str, found: dict[str, Hits]) -> None:
        """Keep `found` under `token`, and drop the collection's rows under any other token, in one
        transaction."""
        chunks = {
            cid: (text, vec)
            for h in found.values()
            for cid, text, vec in zip(h.ids, h.texts, h.embeddings, strict=True)
        }
        self.write_all(
            [
                ("DELETE FROM hits WHERE collection=? AND token!=?", [(collection, token)]),
                ("DELETE FROM chunks WHERE collection=? AND token!=?", [(collection, token)]),
                (
                    "INSERT OR REPLACE INTO hits VALUES (?, ?, ?, ?, ?)",
                    [
                        (collection, token, key, json.dumps(h.ids), json.dumps(h.scores))
                        for key, h in found.items()
                    ],
                ),
                (
                    "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?)",
                    [
                        (collection, token, cid, text, np.ascontiguousarray(vec, dtype=np.float32).tobytes())
                        for cid, (text, vec) in chunks.items()
                    ],
                ),
            ]
        )


def hit_key(vector: np.ndarray, n: int) -> str:
    """The query as Chroma sees it (its float32 bytes) and how many chunks were asked for."""
    data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    return hashlib.sha256(f"{n}:".encode() + data).hexdigest()


def cached_nearest(
    cache: HitCache,
    collection: str,
    state: CollectionState,
    open_collection: Callable[[], Any],
    unchanged: Callable[[], bool],
    embeddings: np.ndarray,
    n: int,
) -> list[Hits]:
    """`nearest`, answered from the cache where it can be and by Chroma (`open_collection()`) for the rest,
    which is then kept if the collection is still in `state` (`unchanged()`): answers read while another
    process wrote must not be kept under the token of before."""
    n = min(n, state.count)
    if len(embeddings) == 0 or n < 1:
        return []
    _check_dim(embeddings, state.metadata.get("pov.dim"), collection)
    keys = [hit_key(v, n) for v in embeddings]
    found = cache.hits(collection, state.token, list(dict.fromkeys(keys)))
    chunks = cache.chunks(collection, state.token, list({i for ids, _ in found.values() for i in ids}))
    out: dict[str, Hits] = {}
    for key, (ids, scores) in found.items():
        if all(i in chunks for i in ids):
            out[key] = Hits(ids, [chunks[i][0] for i in ids], np.stack([chunks[i][1] for i in ids]), scores)
    first: dict[str, int] = {}  # each key's first row: a question asked twice is asked of Chroma once
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    missing = [k for k in first if k not in out]
    if missing:
        rows = [first[k] for k in missing]
        asked = dict(zip(missing, nearest(open_collection(), embeddings[rows], n), strict=True))
        out.update(asked)
        if unchanged():
            cache.put(collection, state.token, asked)
    return [out[k] for k in keys]


def _check_dim(embeddings: np.ndarray, dim: Any, name: str) -> None:
    if dim is not None and embeddings.shape[1] != dim:
        raise UserError(
            f"query embeddings have dimension {embeddings.shape[1]}, collection {name!r} "
            f"holds dimension {dim}: the embedder changed; `pov ingest SPEC --rebuild`"
        )
