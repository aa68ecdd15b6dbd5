"""Embedding providers behind one on-disk cache.

Registered by name in `runner.registry.EMBEDDERS` (`sentence-transformers`, `cohere`, `use-multilingual`); each module imports
its SDK only when it is picked.
"""

from __future__ import annotations

from runner.retrieval.embedders.base import CachedEmbedder, Embedder, build_embedder, same_embedder

__all__ = ["CachedEmbedder", "Embedder", "build_embedder", "same_embedder"]
