"""Counting a prompt's tokens with its model's own tokenizer, in the parent process, for the complexity
metrics: from tokenizer.json through `tokenizers` where possible (no transformers import here)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.spec import Model

log = logging.getLogger(__name__)


def _tokenizer_file(model: Model) -> str | None:
    """The model's tokenizer.json: in its local folder, or in the Hugging Face cache (never downloaded)."""
    local = Path(model.name) / "tokenizer.json"
    if local.is_file():
        return str(local)
    if Path(model.name).is_dir():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model.name, "tokenizer.json", revision=model.revision)
    except Exception:
        return None
    return found if isinstance(found, str) else None


def token_counter(resolved: dict[str, Model]) -> Callable[[str], Callable[[str], int] | None]:
    """Per model key, a function counting a text's tokens with the model's tokenizer (None: count words).

    From tokenizer.json through the `tokenizers` library when the model has one: the same counts as its
    fast tokenizer in transformers, without importing transformers in this process (seconds, which would
    delay the first results). Else the tokenizer through transformers."""
    cache: dict[str, Callable[[str], int] | None] = {}

    def for_model(key: str) -> Callable[[str], int] | None:
        if key not in cache:
            cache[key] = _counter(resolved[key])
        return cache[key]

    return for_model


def _counter(model: Model) -> Callable[[str], int] | None:
    from runner.generation import is_remote

    path = _tokenizer_file(model)
    if path is None and is_remote(model.backend):
        return None  # a server's model name need not be a hub name: no transformers import to find out
    if path is not None:
        try:
            from tokenizers import Tokenizer

            fast = Tokenizer.from_file(path)
            return lambda text: len(fast.encode(text, add_special_tokens=False).ids)
        except Exception:
            log.debug("tokenizers could not read %s; trying transformers", path, exc_info=True)
    try:
        from runner.generation.backends.transformers import load_tokenizer

        tok = load_tokenizer(model)
        lock = threading.Lock()  # a transformers tokenizer changes its settings per call: one call at a time

        def count(text: str) -> int:
            with lock:
                return len(tok(text, add_special_tokens=False)["input_ids"])

        return count
    except Exception:
        return None  # a hub model not cached on this host: complexity counts words only
