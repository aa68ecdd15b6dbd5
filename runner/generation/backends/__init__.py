"""Generation backends: load a model once, then answer batches of prompts.

Registered by name in `runner.registry.BACKENDS` (`transformers`, `unsloth`, `openai`); each module imports its
heavy SDK only when it is picked. `transformers` and `unsloth` are `Backend`s, loaded inside a worker process;
`openai` is a `RemoteBackend`: the model runs in an inference server, and the run's own process talks to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runner.generation.backends.base import (
    Backend,
    GenerationOut,
    RemoteBackend,
    prompt_budget,
    truncate_left,
)
from runner.registry import BACKENDS

if TYPE_CHECKING:
    from runner.spec import Limits, Model

__all__ = [
    "BACKENDS",
    "Backend",
    "GenerationOut",
    "RemoteBackend",
    "backend_class",
    "is_remote",
    "prompt_budget",
    "remote_worker",
    "truncate_left",
]


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as `name` (or a `module:Class` path)."""
    cls: type[Backend] = BACKENDS.load(name)
    return cls


def is_remote(name: str) -> bool:
    """True when backend `name` runs its model in a server (no worker process), e.g. `openai`."""
    return BACKENDS.is_remote(name)


def remote_worker(
    model: Model, limits: Limits, log_path: Path, should_stop: Callable[[], bool] | None = None
) -> RemoteBackend:
    """The worker handle of a remote backend's model (the executors' factory for `is_remote` backends)."""
    cls: type[RemoteBackend] = BACKENDS.load(model.backend)
    return cls(model, limits, log_path, should_stop)
