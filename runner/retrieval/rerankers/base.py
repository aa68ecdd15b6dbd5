"""The query-reranker Protocol, and the cache in front of every provider.

A query reranker scores how well each document answers a query: `score(query, documents) -> (n,)`, higher
is more relevant. Scores are the model's own (a cross-encoder's logit or probability, Cohere's relevance in
[0, 1]): they order one question's candidates, and are not comparable across models, nor across generations
of one vendor's rerank models. `build_reranker` wraps a provider in a `CachedReranker`, which answers from
an on-disk cache keyed by (provider, model, sha256 of the query, sha256 of the document) and asks the
provider only for pairs it has never scored, so a second `pov retrieve` makes no rerank calls and a fully
cached run loads no model and needs no API key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from runner.retrieval.embedders.cache import text_sha
from runner.retrieval.sqlite_store import SqliteStore
from runner.spec import QueryReranker as QueryRerankerSpec


class QueryReranker(Protocol):
    provider: str
    model: str

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """float64 relevance of each document to the query, shape (len(documents),); higher is better."""
        ...


class RerankProvider(QueryReranker, Protocol):
    calls: int
    """Requests made to the model or API (batches, retries included)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    query_sha TEXT NOT NULL,
    doc_sha TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (provider, model, query_sha, doc_sha)
) WITHOUT ROWID
"""


class ScoreCache(SqliteStore):
    """Rerank scores on disk (SQLite in WAL mode, as the embedding cache): atomic batches, shared by
    processes."""

    schemas = (_SCHEMA,)

    def get_many(
        self, provider: str, model: str, query_sha: str, doc_shas: Sequence[str]
    ) -> dict[str, float]:
        rows = self.select_in(
            "SELECT doc_sha, score FROM scores WHERE provider=? AND model=? AND query_sha=? "
            "AND doc_sha IN ({marks})",
            (provider, model, query_sha),
            doc_shas,
        )
        return {sha: float(score) for sha, score in rows}

    def put_many(self, provider: str, model: str, query_sha: str, items: Iterable[tuple[str, float]]) -> None:
        rows = [(provider, model, query_sha, sha, float(score)) for sha, score in items]
        self.write_many("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)", rows)


class CachedReranker:
    """A `QueryReranker` that consults the cache first; see the module docstring."""

    def __init__(
        self, provider: str, model: str, factory: Callable[[], RerankProvider], cache: ScoreCache | None
    ) -> None:
        self.provider, self.model = provider, model
        self._factory = factory
        self._inner: RerankProvider | None = None
        self.cache = cache
        self._memory: dict[tuple[str, str], float] = {}
        self.hits = 0
        self.misses = 0

    @property
    def calls(self) -> int:
        return self._inner.calls if self._inner is not None else 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "provider_calls": self.calls}

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        docs = list(documents)
        q = text_sha(query)
        shas = [text_sha(d) for d in docs]
        unique = dict(zip(shas, docs, strict=True))
        found = {s: self._memory[(q, s)] for s in unique if (q, s) in self._memory}
        wanted = [s for s in unique if s not in found]
        if wanted and self.cache is not None:
            found.update(self.cache.get_many(self.provider, self.model, q, wanted))
        missing = [s for s in unique if s not in found]
        self.hits += len(unique) - len(missing)
        self.misses += len(missing)
        if missing:
            if self._inner is None:
                self._inner = self._factory()
            got = np.asarray(self._inner.score(query, [unique[s] for s in missing]), dtype=np.float64)
            if got.shape != (len(missing),):
                raise RuntimeError(
                    f"{self.provider} returned {got.shape[0]} scores for {len(missing)} documents"
                )
            new = dict(zip(missing, (float(x) for x in got), strict=True))
            if self.cache is not None:
                self.cache.put_many(self.provider, self.model, q, new.items())
            found.update(new)
        for s in unique:
            self._memory[(q, s)] = found[s]
        return np.array([found[s] for s in shas], dtype=np.float64)


def cache_path(state_dir: Path) -> Path:
    return Path(state_dir) / "cache" / "rerank.sqlite"


def build_reranker(spec: QueryRerankerSpec, state_dir: Path | None) -> CachedReranker:
    """The spec's provider behind the cache under `state_dir/cache` (no disk cache when None)."""
    from runner.registry import RERANKERS

    cls = RERANKERS.load(spec.provider)
    cache = ScoreCache(cache_path(state_dir)) if state_dir is not None else None
    return CachedReranker(spec.provider, spec.model, lambda: cls(spec), cache)
