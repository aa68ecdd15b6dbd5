"""Three-stage retrieval for a batch of (question, POV set, k schedule) keys.

1. `vector`: Chroma's nearest `k1` chunks to the question (embedder, kind `query`); score = cosine
   similarity = 1 - distance, ties by chunk id.
2. `query`: cosine(question, chunk) with the reranker; keep `k2`. When the reranker is the store's
   embedder, the stored vectors and the stage-1 question vector are reused (then stage 2 keeps stage 1's
   order), else chunks and question are embedded by the reranker. With a `query_reranker` (a cross-encoder
   or Cohere rerank), its score of each (question, chunk) pair instead.
3. `pov`: the key's scoring method (runner.retrieval.pov_stage: `l2`, the notebook's POV score, by default)
   against the POV set's statements, embedded by the reranker as queries; keep `k3`.
Ties keep the previous stage's order (stable sorts), so rankings are deterministic. Each result carries its
retrieval metrics (runner.retrieval.metrics): what stage 3 kept of the question's top, how its final chunks
differ from the other POV sets' (whose stage 3 is computed for that, as companions), boilerplate and
chunks longer than the embedder's window per stage.

Batched over all keys: each question is sent to Chroma once (for the largest k1 it needs; a smaller k1
takes the prefix), each unique question, chunk and POV statement is embedded once (through the cache),
each POV set once for every question, and stage 3 is one matrix product per POV set (and method).

A key is (question id, POV set, k schedule, POV score name); a key without the fourth element means the
notebook's `l2`.

Heavy modules (torch, chromadb, sentence-transformers) are imported only when a Retriever is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from runner.errors import UserError
from runner.retrieval import metrics as m
from runner.retrieval.chunking import is_boilerplate_chunk
from runner.retrieval.nearest import HitCache, Hits, cached_nearest, nearest
from runner.retrieval.pov_stage import PovStage, pov_method
from runner.retrieval.scoring import cosine_scores, rank_desc
from runner.spec import DEFAULT_POV_SCORE, matrix_pov_sets

if TYPE_CHECKING:
    from runner.retrieval.chroma_state import CollectionState
    from runner.retrieval.embedders.base import CachedEmbedder
    from runner.retrieval.rerankers import CachedReranker
    from runner.retrieval.store import Store
    from runner.spec import Experiment

STAGES = ("vector", "query", "pov")
Key = tuple[str, str, tuple[int, int, int], str]
"""(question id, POV set, k schedule, POV score name)."""
AnyKey = Key | tuple[str, str, tuple[int, int, int]]
"""What `retrieve` takes: a key, or one without its POV score (the notebook's `l2`)."""
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
    pov_score: str = DEFAULT_POV_SCORE
    """Name of the stage-3 scoring method."""
    metrics: dict[str, float] = field(default_factory=dict)
    """runner.retrieval.metrics, by name."""

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
            "pov_score": self.pov_score,
            "stages": [s.to_dict() for s in self.stages],
            "metrics": dict(self.metrics),
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
        metrics = {str(name): float(v) for name, v in (d.get("metrics") or {}).items()}
        return cls(
            str(d["question"]),
            str(d["pov_set"]),
            k,
            stages,
            str(d.get("pov_score", DEFAULT_POV_SCORE)),
            metrics,
        )


def _select(
    order: list[int], keep: int, ids: list[str], texts: list[str], scores: Any
) -> tuple[list[int], Stage]:
    top = order[:keep]
    return top, Stage("", [ids[i] for i in top], [texts[i] for i in top], [float(scores[i]) for i in top])


class Retriever(Protocol):
    """What a run needs of retrieval (the engine is typed against this; tests pass their own)."""

    def retrieve(self, keys: Iterable[AnyKey]) -> dict[Any, RetrievalResult]:
        """The three ranked stages for each (question id, POV set, k schedule[, POV score]), keyed as given."""
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
        self.query_reranker: CachedReranker | None = None
        if spec.query_reranker is not None:
            from runner.retrieval.rerankers import build_reranker

            self.query_reranker = build_reranker(spec.query_reranker, exp.state_dir)
        self.warnings: list[str] = []
        self._collection: Any = None
        self._state_read = False
        self._known: CollectionState | None = None
        self.hit_cache = HitCache(exp.state_dir / "cache" / "hits.sqlite")

    def check_embedder(self) -> Callable[[list[str]], np.ndarray]:
        reranker = self.reranker
        # One kind for answers, chunks and statements alike: the checks compare them with one another.
        return lambda texts: reranker.embed(texts, "document")

    def cache_stats(self) -> dict[str, Any]:
        """Embedding cache hits and misses and provider calls, summed, and per role."""
        roles: dict[str, CachedEmbedder | CachedReranker] = (
            {"embedder": self.embedder}
            if self.reuse_stored
            else {"embedder": self.embedder, "reranker": self.reranker}
        )
        if self.query_reranker is not None:
            roles["query_reranker"] = self.query_reranker
        per = {name: e.stats() for name, e in roles.items()}
        total = {k: sum(s[k] for s in per.values()) for k in ("hits", "misses", "provider_calls")}
        return {**total, "by_role": per}

    def _open(self) -> Any:
        if self._collection is None:
            with self.store.answering(mid_run=True):
                self._collection, warnings = self.store.open_for_query(self.exp.spec.embedder)
            self._warn(warnings)
        return self._collection

    def _warn(self, warnings: list[str]) -> None:
        for w in warnings:
            if w not in self.warnings:
                log.warning(w)
                self.warnings.append(w)

    def _state(self) -> CollectionState | None:
        """The collection's state, read once: this retriever's cached stage-1 answers are those of that state
        of the collection, however long it lives."""
        if not self._state_read:
            self._state_read = True
            state = self.store.state()
            if state is not None and state.count > 0:
                self._warn(self.store.query_warnings(state.metadata, self.exp.spec.embedder))
                self._known = state
        return self._known

    def _nearest(self, vectors: np.ndarray, n: int) -> list[Hits]:
        """Stage 1 for each vector: from the hit cache where the store's state can be read, else from Chroma."""
        state = self._state()
        if state is None:
            col = self._open()
            with self.store.answering(mid_run=True):  # a run is under way: a dead server aborts it
                return nearest(col, vectors, n)

        def unchanged() -> bool:
            now = self.store.state()
            return now is not None and now.token == state.token

        where = f"{self.store.location}::{self.store.name}"
        return cached_nearest(self.hit_cache, where, state, self._open, unchanged, vectors, n)

    def _check_keys(self, keys: list[Key]) -> None:
        for q, p, k, score in keys:
            pov_method(self.exp, score)
            if q not in self.exp.questions:
                raise UserError(f"unknown question {q!r} (declared: {', '.join(self.exp.questions)})")
            if p not in self.exp.pov_sets:
                raise UserError(f"unknown POV set {p!r} (declared: {', '.join(self.exp.pov_sets)})")
            if len(k) != 3 or not k[0] >= k[1] >= k[2] >= 1:
                raise UserError(f"k schedule {list(k)}: three sizes k1 >= k2 >= k3 >= 1")

    def retrieve(self, keys: Iterable[AnyKey]) -> dict[Any, RetrievalResult]:
        given = list(dict.fromkeys(keys))
        full: dict[AnyKey, Key] = {
            key: (
                str(key[0]),
                str(key[1]),
                (int(key[2][0]), int(key[2][1]), int(key[2][2])),
                str(key[3]) if len(key) > 3 else DEFAULT_POV_SCORE,
            )
            for key in given
        }
        wanted: list[Key] = list(dict.fromkeys(full.values()))
        self._check_keys(wanted)
        if not wanted:
            return {}
        # Companions: the same question, k schedule and method for the matrix's other POV sets, whose final
        # chunks the stance metric compares with (scored in the same batch; not returned).
        in_matrix = matrix_pov_sets(self.exp)
        companions = [(q, o, k, s) for q, _, k, s in wanted for o in in_matrix]
        every: list[Key] = list(dict.fromkeys([*wanted, *companions]))
        if self._state() is None:
            self._open()  # a missing collection or another embedder's is an error before any embedding
        qids = list(dict.fromkeys(q for q, _, _, _ in every))
        qtexts = [self.exp.questions[q].text for q in qids]
        q_store = self.embedder.embed(qtexts, "query")
        k1_max = max(k[0] for _, _, k, _ in every)
        hits = dict(zip(qids, self._nearest(q_store, k1_max), strict=True))

        # Stage 2 depends on (question, k1, k2) only: share it across POV sets.
        texts_by_id = {i: t for h in hits.values() for i, t in zip(h.ids, h.texts, strict=True)}
        if self.reuse_stored:
            q_rerank = dict(zip(qids, q_store, strict=True))
            doc_vec = {i: v for h in hits.values() for i, v in zip(h.ids, h.embeddings, strict=True)}
        else:
            q_rerank = dict(zip(qids, self.reranker.embed(qtexts, "query"), strict=True))
            needed = list(dict.fromkeys(i for q, _, k, _ in every for i in hits[q].ids[: k[0]]))
            doc_vec = dict(
                zip(needed, self.reranker.embed([texts_by_id[i] for i in needed], "document"), strict=True)
            )

        stage12: dict[tuple[str, int, int], tuple[Stage, Stage]] = {}
        for q, _, (k1, k2, _), _ in every:
            if (q, k1, k2) in stage12:
                continue
            h = hits[q]
            ids, texts = h.ids[:k1], h.texts[:k1]
            s1 = Stage("vector", ids, texts, [float(x) for x in h.scores[:k1]])
            scores: Any
            if self.query_reranker is not None:
                scores = self.query_reranker.score(self.exp.questions[q].text, texts)
            else:
                mat = (
                    np.stack([doc_vec[i] for i in ids])
                    if ids
                    else np.zeros((0, len(q_rerank[q])), np.float32)
                )
                scores = cosine_scores(q_rerank[q], mat, assume_normalized=True)
            _, s2 = _select(rank_desc(scores), k2, ids, texts, scores)
            s2.name = "query"
            stage12[(q, k1, k2)] = (s1, s2)

        pov_stage = PovStage(self.exp, lambda statements: self.reranker.embed(statements, "query"))
        candidates = [stage12[(q, k[0], k[1])][1] for q, _, k, _ in every]
        scored = pov_stage.score(
            [(p, s) for _, p, _, s in every], [(c.ids, c.scores) for c in candidates], doc_vec
        )
        out: dict[Key, RetrievalResult] = {}
        orders: dict[Key, list[str]] = {}
        for key, s2, scores3 in zip(every, candidates, scored, strict=True):
            q, pov, (k1, k2, k3), score_name = key
            order = rank_desc(scores3)
            orders[key] = [s2.ids[i] for i in order]
            _, s3 = _select(order, k3, s2.ids, s2.texts, scores3)
            s3.name = "pov"
            s3.statements = list(self.exp.pov_sets[pov])
            s3.similarities = pov_stage.similarities(pov, s3.ids, doc_vec)
            out[key] = RetrievalResult(q, pov, key[2], [stage12[(q, k1, k2)][0], s2, s3], score_name)
        self._add_metrics(wanted, out, orders, in_matrix)
        return {key: out[full[key]] for key in given}

    def _add_metrics(
        self,
        keys: list[Key],
        out: dict[Key, RetrievalResult],
        orders: dict[Key, list[str]],
        in_matrix: list[str],
    ) -> None:
        texts = {i: t for r in out.values() for i, t in zip(r.stages[0].ids, r.stages[0].texts, strict=True)}
        boilerplate = {i: is_boilerplate_chunk(t) for i, t in texts.items()}
        counted = self.reranker.token_counts(list(texts.values()))
        too_long = (
            {i: n > counted[1] for i, n in zip(texts, counted[0], strict=True)}
            if counted is not None
            else None
        )
        for key in keys:
            q, pov, k, score = key
            r = out[key]
            s2, s3 = r.stages[1], r.stages[2]
            others = [out[(q, o, k, score)].stages[2].ids for o in in_matrix if o != pov]
            r.metrics = {
                m.RELEVANCE_KEPT: m.relevance_kept(s2.ids, s3.ids),
                m.BEST_MATCH_RANK: m.best_match_rank(s2.ids, orders[key]),
                **m.stage_shares([st.ids for st in r.stages], boilerplate, too_long),
            }
            specificity = m.stance_specificity(s3.ids, others)
            if specificity is not None:
                r.metrics[m.STANCE_SPECIFICITY] = specificity


def open_retriever(exp: Experiment) -> ChromaRetriever:
    """The real retriever, over a collection brought up to date first: ingest is idempotent (an unchanged
    corpus writes nothing), and a run must never retrieve from chunks of files edited since."""
    from runner.retrieval.indexing import ingest
    from runner.retrieval.ingest_report import truncation_warning

    report = ingest(exp)
    if report.truncated:
        log.warning(truncation_warning(report, exp.spec.embedder.model))
    retriever = ChromaRetriever(exp)
    if not retriever.reuse_stored:
        # A separate reranker (an API such as Cohere) is first needed by retrieval, after the execution
        # exists. Every run embeds its POV statements with it anyway (stage 3, cached afterwards), so doing
        # that now makes an unreachable reranker fail before anything is written, at the cost of nothing.
        statements = list(dict.fromkeys(s for pov in exp.pov_sets.values() for s in pov))
        retriever.reranker.embed(statements, "query")
    return retriever
