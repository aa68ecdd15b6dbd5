"""Generation backends, registered by name; each module imports its heavy SDK only when loaded."""

from __future__ import annotations

from typing import Any

BACKENDS: dict[str, str] = {
    "transformers": "runner.backends.transformers:TransformersBackend",
    "unsloth": "runner.backends.unsloth:UnslothBackend",
}


def backend_class(name: str) -> Any:
    from runner.registry import load

    return load(BACKENDS, name)
