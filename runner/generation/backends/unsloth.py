"""Unsloth: FastLanguageModel (4-bit bitsandbytes, fast inference kernels); GPU only, an optional extra.

Unsloth patches transformers when it is imported, so it must be imported before anything imports
transformers in that process. The worker process calls `preimport()` first thing when a model's backend is
`unsloth`; this module itself imports neither at its top, so importing it is always safe and cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner.generation.backends.transformers import TransformersBackend

if TYPE_CHECKING:
    from runner.spec import Model

INSTALL_HINT = "pip install 'pov-runner[gpu]' (unsloth and bitsandbytes; they need a CUDA GPU)"


def preimport() -> None:
    """Import unsloth now, before transformers, so that its patches apply."""
    import sys

    if "unsloth" in sys.modules:
        return
    if "transformers" in sys.modules:
        # Unsloth would only warn; its kernels might then silently not be used.
        raise RuntimeError("unsloth must be imported before transformers in the worker process")
    try:
        import unsloth  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"backend unsloth is not installed ({e}); {INSTALL_HINT}") from e


def warm_imports() -> None:
    """Import unsloth, then what loading needs (run by a worker before it is asked for a model)."""
    preimport()
    from runner.generation.backends.transformers import warm_imports as warm_transformers

    warm_transformers()


class UnslothBackend(TransformersBackend):
    """Same prompt handling and batched generation as TransformersBackend; the model comes from
    FastLanguageModel, switched to inference mode."""

    compiles = False  # Unsloth patches the model's forward; the spec refuses generation.compile with it

    def __init__(self, model: Model, device: str | None = None) -> None:
        import torch

        if model.device == "cpu" or not torch.cuda.is_available():
            raise RuntimeError("backend unsloth needs a CUDA GPU; use backend: transformers on the CPU")
        super().__init__(model, device)

    def _load(self) -> tuple[Any, Any]:
        preimport()
        import torch
        from unsloth import FastLanguageModel

        if self.device.startswith("cuda"):
            # Unsloth places the model on the current device.
            torch.cuda.set_device(self.device)
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=self.spec.name,
            max_seq_length=self.spec.max_seq_length,
            dtype=None if self.spec.dtype == "auto" else self.dtype,
            load_in_4bit=self.spec.load_in_4bit,
            revision=self.spec.revision,
        )
        FastLanguageModel.for_inference(model)
        # Some checkpoints come with a processor; generation needs its text tokenizer.
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        return model, tokenizer
