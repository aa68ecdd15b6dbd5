"""`cross-encoder` query reranker: a sentence-transformers `CrossEncoder` read from a local model folder (or a
hub name the local Hugging Face cache holds), run on the CPU or a GPU. It reads each (question, chunk) pair
whole, which a bi-encoder's cosine does not; chunks longer than its `max_length` tokens are cut."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import UserError
from runner.retrieval.embedders.sentence_transformers import default_device
from runner.spec import QueryReranker as QueryRerankerSpec


@functools.lru_cache(maxsize=4)
def load_cross_encoder(path: str, device: str) -> Any:
    """One loaded model per (path, device) per process."""
    from sentence_transformers import CrossEncoder
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return CrossEncoder(path, device=device)
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load cross-encoder {path!r}: give the folder of a saved model as query_reranker.model "
            f"(the Hugging Face hub is not reached offline) ({e.__class__.__name__})"
        ) from None


class CrossEncoderReranker:
    provider = "cross-encoder"

    def __init__(self, spec: QueryRerankerSpec) -> None:
        path = Path(spec.model).expanduser()
        self.model = spec.model
        self.path = str(path.resolve()) if path.exists() else spec.model
        self.batch_size = spec.batch_size
        self.device = spec.device
        self.calls = 0

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        docs = list(documents)
        if not docs:
            return np.zeros(0, dtype=np.float64)
        model = load_cross_encoder(self.path, self.device or default_device())
        out = model.predict(
            [(query, d) for d in docs],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        self.calls += math.ceil(len(docs) / self.batch_size)
        scores = np.asarray(out, dtype=np.float64)
        return scores.reshape(len(docs), -1)[:, 0] if scores.ndim > 1 else scores
