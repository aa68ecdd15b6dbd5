"""The embedder Protocol, and the cache that sits in front of every provider.

An embedder maps texts to unit-length float32 rows: `embed(texts, kind) -> (n, d)`, `kind` being
`document` (stored chunks) or `query` (questions, POV statements). Providers (runner/retrieval/embedders/<name>.py)
implement `Provider`; `build_embedder` wraps one in a `CachedEmbedder`, which answers from an on-disk
cache (runner/retrieval/embedders/cache.py) and from memory, asks the provider only for texts it has never seen
(each once), and counts hits, misses and provider calls. The provider is created, and its model or API
client loaded, only on the first miss, so a fully cached run never loads a model or needs an API key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import numpy as np

from runner.retrieval.embedders.cache import EmbeddingCache, text_sha
from runner.spec import Embedder as EmbedderSpec

Kind = Literal["document", "query"]
KINDS: tuple[Kind, ...] = ("document", "query")
log = logging.getLogger(__name__)


class Embedder(Protocol):
    provider: str
    model: str

    def embed(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        """Unit-normalised float32 array of shape (len(texts), d)."""
        ...


class Provider(Embedder, Protocol):
    calls: int
    """Requests made to the model or API (batches, retries included)."""
    counts_tokens: ClassVar[bool]
    """Whether `token_counts` can count tokens locally (the class says so before any instance exists, so
    that asking never needs a model or an API key)."""

    def token_counts(self, texts: Sequence[str]) -> tuple[list[int], int]:
        """Each document's length in tokens as the model reads it, and the model's window (longer documents
        are cut to it before they are embedded). Called only when `counts_tokens`."""
        ...


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    out: np.ndarray = np.divide(arr, norms, out=np.zeros_like(arr), where=norms > 0)
    return out


def cache_namespace(spec: EmbedderSpec) -> str:
    """The cache's `model` key: the model plus every option that changes the vectors it returns."""
    return spec.model if spec.query_prompt is None else f"{spec.model}|query_prompt={spec.query_prompt}"


def same_embedder(a: EmbedderSpec, b: EmbedderSpec) -> bool:
    """Whether two specs yield the same vectors (batch size and device do not change them)."""
    return (a.provider, a.model, a.query_prompt) == (b.provider, b.model, b.query_prompt)


class CachedEmbedder:
    """An `Embedder` that consults the cache first; see the module docstring."""

    def __init__(
        self,
        provider: str,
        model: str,
        namespace: str,
        factory: Callable[[], Provider],
        cache: EmbeddingCache | None,
        *,
        counts_tokens: bool = False,
    ) -> None:
        self.provider, self.model, self.namespace = provider, model, namespace
        self._factory = factory
        self.counts_tokens = counts_tokens
        self._tokens: dict[str, tuple[int, int]] = {}
        self._inner: Provider | None = None
        self.cache = cache
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        self.hits = 0
        self.misses = 0
        self.dim: int | None = None

    @property
    def calls(self) -> int:
        return self._inner.calls if self._inner is not None else 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "provider_calls": self.calls}

    def _provider(self) -> Provider:
        if self._inner is None:
            self._inner = self._factory()
        return self._inner

    def embed(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        check_kind(kind)
        texts = list(texts)
        shas = [text_sha(t) for t in texts]
        unique = dict(zip(shas, texts, strict=True))
        found = {s: self._memory[(kind, s)] for s in unique if (kind, s) in self._memory}
        wanted = [s for s in unique if s not in found]
        if wanted and self.cache is not None:
            found.update(self.cache.get_many(self.provider, self.namespace, kind, wanted))
        missing = [s for s in unique if s not in found]
        self.hits += len(unique) - len(missing)
        self.misses += len(missing)
        if missing:
            vecs = normalize_rows(self._provider().embed([unique[s] for s in missing], kind))
            if vecs.shape[0] != len(missing):
                raise RuntimeError(
                    f"{self.provider} returned {vecs.shape[0]} embeddings for {len(missing)} texts"
                )
            new = dict(zip(missing, vecs, strict=True))
            if self.cache is not None:
                self.cache.put_many(self.provider, self.namespace, kind, new.items())
            found.update(new)
        for s in unique:
            self._memory[(kind, s)] = found[s]
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        out = np.stack([found[s] for s in shas]).astype(np.float32, copy=False)
        if self.dim is not None and out.shape[1] != self.dim:
            raise RuntimeError(
                f"{self.provider}/{self.model} returned dimension {out.shape[1]}, "
                f"earlier {self.dim}: clear {self.cache.path if self.cache else 'the cache'}"
            )
        self.dim = out.shape[1]
        return out

    def token_counts(self, texts: Sequence[str]) -> tuple[list[int], int] | None:
        """Each text's length in tokens and the model's window, from the cache where counted before (the
        model is loaded only for texts never counted); None when the provider cannot count locally."""
        if not self.counts_tokens:
            return None
        texts = list(texts)
        shas = [text_sha(t) for t in texts]
        unique = dict(zip(shas, texts, strict=True))
        wanted = [s for s in unique if s not in self._tokens]
        if wanted and self.cache is not None:
            self._tokens.update(self.cache.get_tokens(self.provider, self.model, wanted))
        missing = [s for s in unique if s not in self._tokens]
        if missing:
            counts, window = self._provider().token_counts([unique[s] for s in missing])
            new = {s: (n, window) for s, n in zip(missing, counts, strict=True)}
            if self.cache is not None:
                self.cache.put_tokens(self.provider, self.model, new.items())
            self._tokens.update(new)
        if not texts:
            return [], 0
        return [self._tokens[s][0] for s in shas], self._tokens[shas[0]][1]


def cache_path(state_dir: Path) -> Path:
    return Path(state_dir) / "cache" / "embeddings.sqlite"


def build_embedder(spec: EmbedderSpec, state_dir: Path | None) -> CachedEmbedder:
    """The spec's provider behind the cache under `state_dir/cache` (no disk cache when None)."""
    from runner.registry import EMBEDDERS

    cls = EMBEDDERS.load(spec.provider)
    cache = EmbeddingCache(cache_path(state_dir)) if state_dir is not None else None
    return CachedEmbedder(
        spec.provider,
        spec.model,
        cache_namespace(spec),
        lambda: cls(spec),
        cache,
        counts_tokens=cls.counts_tokens,
    )
