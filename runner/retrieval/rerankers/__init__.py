"""Stage-2 rerank models: a cross-encoder (sentence-transformers `CrossEncoder`, a local folder) or Cohere's
rerank API, each reading (question, chunk) pairs, behind one on-disk score cache.

Registered by name in `runner.registry.RERANKERS` (`cross-encoder`, `cohere`); each module imports its SDK
only when it is picked, and only on the first pair the cache does not hold.
"""

from __future__ import annotations

from runner.retrieval.rerankers.base import CachedReranker, QueryReranker, build_reranker

__all__ = ["CachedReranker", "QueryReranker", "build_reranker"]
