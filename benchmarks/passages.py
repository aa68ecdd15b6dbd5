"""A stand-in retriever for benchmarks/bench_generation.py, for hosts where Chroma or the embedder cannot run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class PassageRetriever:
    """A runner.retrieval.Retriever for when Chroma or the embedder cannot run here: the same shapes (k3
    passages of up to 180 words), chosen by a hash of the key."""

    def __init__(self, words: int = 180) -> None:
        import hashlib

        self._hash = hashlib.sha256
        self.passages = []
        for f in sorted((REPO / "data" / "brics").glob("[0-9]*.md")):
            text = f.read_text().split()
            self.passages += [" ".join(text[i : i + words]) for i in range(0, len(text), words)]

    def retrieve(self, keys: Any) -> dict[Any, Any]:
        from runner.retrieval import RetrievalResult, Stage

        out = {}
        for q, p, k in keys:
            start = int(self._hash(f"{q}|{p}".encode()).hexdigest()[:8], 16)
            picked = [self.passages[(start + j) % len(self.passages)] for j in range(k[2])]
            ids = [f"p{j}" for j in range(len(picked))]
            scores = [1.0 - j / 10 for j in range(len(picked))]
            stages = [Stage(name, ids, picked, scores) for name in ("vector", "query", "pov")]
            out[(q, p, tuple(k))] = RetrievalResult(q, p, tuple(k), stages)
        return out

    def check_embedder(self) -> None:
        return None
