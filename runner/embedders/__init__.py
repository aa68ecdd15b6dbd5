"""Embedding providers, registered by name; each module imports its SDK only when used."""

from __future__ import annotations

from typing import Any

PROVIDERS: dict[str, str] = {
    "sentence-transformers": "runner.embedders.sentence_transformers:SentenceTransformerEmbedder",
    "cohere": "runner.embedders.cohere:CohereEmbedder",
}


def provider_class(name: str) -> Any:
    from runner.registry import load

    return load(PROVIDERS, name)
