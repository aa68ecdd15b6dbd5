"""Generation backends: load a model once, then answer batches of prompts.

Registered by name in `runner.registry.BACKENDS` (`transformers`, `unsloth`); each module imports its heavy
SDK only when it is picked.
"""

from __future__ import annotations

from runner.generation.backends.base import Backend, GenerationOut, prompt_budget, truncate_left
from runner.registry import BACKENDS

__all__ = ["BACKENDS", "Backend", "GenerationOut", "backend_class", "prompt_budget", "truncate_left"]


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as `name` (or a `module:Class` path)."""
    cls: type[Backend] = BACKENDS.load(name)
    return cls
