"""Three-stage retrieval for a batch of (question, POV set, k schedule) keys.

1. `vector`: Chroma's nearest `k1` chunks to the question (embedder, kind `query`); score = cosine
   similarity = 1 - distance, ties by chunk id.
2. `query`: cosine(question, chunk) with the reranker; keep `k2`. When the reranker is the store's
   embedder, the stored vectors and the stage-1 question vector are reused (then stage 2 keeps stage 1's
   order), else chunks and question are embedded by the reranker.
3. `pov`: the POV score (`runner.retrieval.scoring.pov_scores`) against the POV set's statements,
   embedded by the reranker as queries; keep `k3`.
Ties keep the previous stage's order (stable sorts), so rankings are deterministic.

Batched over all keys: each question is sent to Chroma once (for the largest k1 it needs; a smaller k1
takes the prefix), each unique question, chunk and POV statement is embedded once (through the cache),
each POV set once for every question, and stage 3 is one matrix product per POV set.

Heavy modules (torch, chromadb, sentence-transformers) are imported only when a Retriever is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from runner.errors import UserError
from runner.retrieval.scoring import cosine_scores, pov_scores, rank_desc

if TYPE_CHECKING:
    from runner.retrieval.embedders.base import CachedEmbedder
    from runner.retrieval.store import Store
    from runner.spec import Experiment

STAGES = ("vector", "query", "pov")
Key = tuple[str, str, tuple[int, int, int]]
log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    ids: list[str]
    texts: list[str]
    scores: list[float]
    statements: list[str] = field(default_factory=list)
    """The POV stage only: the POV set's statements, in order."""
    similarities: list[list[float]] = field(default_factory=list)
    """The POV stage only: per chunk, its cosine similarity to each statement (the score is their L2 norm),
    so that a reader sees which statement lifted a chunk."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "ids": list(self.ids),
            "texts": list(self.texts),
            "scores": list(self.scores),
        }
        if self.statements:
            d["statements"] = list(self.statements)
            d["similarities"] = [list(row) for row in self.similarities]
        return d


@dataclass
class RetrievalResult:
    question: str
    """Question id."""
    pov_set: str
    k: tuple[int, int, int]
    stages: list[Stage] = field(default_factory=list)

    def final_chunks(self) -> list[dict[str, Any]]:
        """Stage 3, best first: dicts with `id`, `text`, `score`, `rank` (1-based)."""
        last = self.stages[-1]
        return [
            {"id": i, "text": t, "score": s, "rank": r}
            for r, (i, t, s) in enumerate(zip(last.ids, last.texts, last.scores, strict=True), 1)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "pov_set": self.pov_set,
            "k": list(self.k),
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrievalResult:
        k = tuple(int(x) for x in d["k"])
        if len(k) != 3:
            raise ValueError(f"k must have three stages, got {d['k']!r}")
        stages = [
            Stage(
                str(s["name"]),
                list(s["ids"]),
                list(s["texts"]),
                [float(x) for x in s["scores"]],
                [str(x) for x in s.get("statements", [])],
                [[float(x) for x in row] for row in s.get("similarities", [])],
            )
            for s in d["stages"]
        ]
        return cls(str(d["question"]), str(d["pov_set"]), k, stages)


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
    dim = (col.metadata or {}).get("pov.dim")
    if dim is not None and embeddings.shape[1] != dim:
        raise UserError(
            f"query embeddings have dimension {embeddings.shape[1]}, collection {col.name!r} "
            f"holds dimension {dim}: the embedder changed; `pov ingest SPEC --rebuild`"
        )
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


def _select(
    order: list[int], keep: int, ids: list[str], texts: list[str], scores: Any
) -> tuple[list[int], Stage]:
    top = order[:keep]
    return top, Stage("", [ids[i] for i in top], [texts[i] for i in top], [float(scores[i]) for i in top])


class Retriever(Protocol):
    """What a run needs of retrieval (the engine is typed against this; tests pass their own)."""

    def retrieve(self, keys: Iterable[Key]) -> dict[Key, RetrievalResult]:
        """The three ranked stages for each (question id, POV set, k schedule)."""
        ...

    def check_embedder(self) -> Callable[[list[str]], np.ndarray] | None:
        """How the output checks embed answers, chunks and statements (the reranker, which scored the POV
        stage, so that an answer is judged in the space its context was chosen in); None skips the checks
        that need embeddings."""
        ...


class ChromaRetriever:
    """`ChromaRetriever(exp).retrieve(keys)` over the experiment's Chroma collection; see the module
    docstring."""

    def __init__(self, exp: Experiment, *, store: Store | None = None) -> None:
        from runner.retrieval.embedders.base import build_embedder, same_embedder
        from runner.retrieval.store import Store

        self.exp = exp
        self.store = store or Store(exp)
        spec = exp.spec
        self.embedder: CachedEmbedder = build_embedder(spec.embedder, exp.state_dir)
        self.reuse_stored = same_embedder(spec.effective_reranker, spec.embedder)
        self.reranker: CachedEmbedder = (
            self.embedder if self.reuse_stored else build_embedder(spec.effective_reranker, exp.state_dir)
        )
        self.warnings: list[str] = []
        self._collection: Any = None

    def check_embedder(self) -> Callable[[list[str]], np.ndarray]:
        reranker = self.reranker
        # One kind for answers, chunks and statements alike: the checks compare them with one another.
        return lambda texts: reranker.embed(texts, "document")

    def cache_stats(self) -> dict[str, Any]:
        """Embedding cache hits and misses and provider calls, summed, and per role."""
        roles = (
            {"embedder": self.embedder}
            if self.reuse_stored
            else {"embedder": self.embedder, "reranker": self.reranker}
        )
        per = {name: e.stats() for name, e in roles.items()}
        total = {k: sum(s[k] for s in per.values()) for k in ("hits", "misses", "provider_calls")}
        return {**total, "by_role": per}

    def _open(self) -> Any:
        if self._collection is None:
            with self.store.answering(mid_run=True):
                self._collection, warnings = self.store.open_for_query(self.exp.spec.embedder)
            for w in warnings:
                log.warning(w)
            self.warnings += warnings
        return self._collection

    def _check_keys(self, keys: list[Key]) -> None:
        for q, p, k in keys:
            if q not in self.exp.questions:
                raise UserError(f"unknown question {q!r} (declared: {', '.join(self.exp.questions)})")
            if p not in self.exp.pov_sets:
                raise UserError(f"unknown POV set {p!r} (declared: {', '.join(self.exp.pov_sets)})")
            if len(k) != 3 or not k[0] >= k[1] >= k[2] >= 1:
                raise UserError(f"k schedule {list(k)}: three sizes k1 >= k2 >= k3 >= 1")

    def retrieve(self, keys: Iterable[Key]) -> dict[Key, RetrievalResult]:
        wanted: list[Key] = list(dict.fromkeys((q, p, tuple(int(x) for x in k)) for q, p, k in keys))  # type: ignore[misc]
        self._check_keys(wanted)
        if not wanted:
            return {}
        col = self._open()
        qids = list(dict.fromkeys(q for q, _, _ in wanted))
        qtexts = [self.exp.questions[q].text for q in qids]
        q_store = self.embedder.embed(qtexts, "query")
        k1_max = max(k[0] for _, _, k in wanted)
        with self.store.answering(mid_run=True):  # a run is under way: a dead server aborts it
            hits = dict(zip(qids, nearest(col, q_store, k1_max), strict=True))

        # Stage 2 depends on (question, k1, k2) only: share it across POV sets.
        texts_by_id = {i: t for h in hits.values() for i, t in zip(h.ids, h.texts, strict=True)}
        if self.reuse_stored:
            q_rerank = dict(zip(qids, q_store, strict=True))
            doc_vec = {i: v for h in hits.values() for i, v in zip(h.ids, h.embeddings, strict=True)}
        else:
            q_rerank = dict(zip(qids, self.reranker.embed(qtexts, "query"), strict=True))
            needed = list(dict.fromkeys(i for q, _, k in wanted for i in hits[q].ids[: k[0]]))
            doc_vec = dict(
                zip(needed, self.reranker.embed([texts_by_id[i] for i in needed], "document"), strict=True)
            )

        stage12: dict[tuple[str, int, int], tuple[Stage, Stage]] = {}
        for q, _, (k1, k2, _) in wanted:
            if (q, k1, k2) in stage12:
                continue
            h = hits[q]
            ids, texts = h.ids[:k1], h.texts[:k1]
            s1 = Stage("vector", ids, texts, [float(x) for x in h.scores[:k1]])
            mat = np.stack([doc_vec[i] for i in ids]) if ids else np.zeros((0, len(q_rerank[q])), np.float32)
            scores = cosine_scores(q_rerank[q], mat, assume_normalized=True)
            _, s2 = _select(rank_desc(scores), k2, ids, texts, scores)
            s2.name = "query"
            stage12[(q, k1, k2)] = (s1, s2)

        pov_by_set: dict[str, dict[str, float]] = {}
        sims_by_set: dict[str, dict[str, list[float]]] = {}
        for pov in dict.fromkeys(p for _, p, _ in wanted):
            statements = self.exp.pov_sets[pov]
            pov_vecs = self.reranker.embed(statements, "query")
            docs = list(
                dict.fromkeys(
                    i for q, p, (k1, k2, _) in wanted if p == pov for i in stage12[(q, k1, k2)][1].ids
                )
            )
            if not docs:
                pov_by_set[pov], sims_by_set[pov] = {}, {}
                continue
            mat = np.stack([doc_vec[i] for i in docs])
            scores = pov_scores(mat, pov_vecs, assume_normalized=True)
            pov_by_set[pov] = dict(zip(docs, (float(s) for s in scores), strict=True))
            # The cosines the score is the norm of, kept for the reader (chunks x statements: small).
            sims = cosine_scores(np.asarray(pov_vecs), mat[None, :, :]).T
            sims_by_set[pov] = {i: [float(x) for x in row] for i, row in zip(docs, sims, strict=True)}

        out: dict[Key, RetrievalResult] = {}
        for key in wanted:
            q, pov, (k1, k2, k3) = key
            s1, s2 = stage12[(q, k1, k2)]
            scores3 = [pov_by_set[pov][i] for i in s2.ids]
            _, s3 = _select(rank_desc(scores3), k3, s2.ids, s2.texts, scores3)
            s3.name = "pov"
            s3.statements = list(self.exp.pov_sets[pov])
            s3.similarities = [sims_by_set[pov][i] for i in s3.ids]
            out[key] = RetrievalResult(q, pov, key[2], [s1, s2, s3])
        return out


def open_retriever(exp: Experiment) -> ChromaRetriever:
    """The real retriever, over a collection brought up to date first: ingest is idempotent (an unchanged
    corpus writes nothing), and a run must never retrieve from chunks of files edited since."""
    from runner.retrieval.indexing import ingest

    ingest(exp)
    retriever = ChromaRetriever(exp)
    if not retriever.reuse_stored:
        # A separate reranker (an API such as Cohere) is first needed by retrieval, after the execution
        # exists. Every run embeds its POV statements with it anyway (stage 3, cached afterwards), so doing
        # that now makes an unreachable reranker fail before anything is written, at the cost of nothing.
        statements = list(dict.fromkeys(s for pov in exp.pov_sets.values() for s in pov))
        retriever.reranker.embed(statements, "query")
    return retriever
