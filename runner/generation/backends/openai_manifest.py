"""What a run records about the server behind a `backend: openai` model (the manifest's `server` entry), so
that `pov rerun` names what changed: the model list the server answers at `/models` (its timestamps left out),
its version and the hash of its chat template where it exposes them; for a server pov-runner starts, the
GGUF's hash, the llama.cpp build (xllamacpp's version), the chat template inside the GGUF and the settings.

A server that does not answer stops the run here, before anything is written, as an unreachable Chroma or
Cohere does.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError
from runner.generation.backends.openai_http import Failure, server_facts
from runner.generation.llamacpp_server import INSTALL_HINT, installed, version

if TYPE_CHECKING:
    from collections.abc import Callable

    from runner.spec import Model


def server_manifest(model: Model, key: str, file_hash: Callable[[Path], str]) -> dict[str, Any]:
    """The manifest's facts about model `key`'s server. `model` has its GGUF resolved (resolve_model);
    `file_hash` hashes a file (the manifest's cache of hashes). Raises UserError when the server cannot
    work: not answering, a key variable not set, xllamacpp not installed."""
    if model.server is not None:
        from runner.generation.backends.openai_api import managed_settings

        if not installed():
            raise UserError(f"models.{key}.server: a llama.cpp server pov-runner starts needs {INSTALL_HINT}")
        gguf = Path(model.server.gguf)
        settings = {k: v for k, v in asdict(managed_settings(model, threads=1)).items() if k != "threads"}
        return {
            "kind": "llama.cpp server (managed)",
            "version": f"xllamacpp {version()}",
            "gguf_sha256": file_hash(gguf),
            "chat_template_sha256": gguf_chat_template_sha256(gguf),
            "settings": settings,
        }
    assert model.base_url is not None
    api_key = None
    if model.api_key_env is not None:
        api_key = os.environ.get(model.api_key_env)
        if not api_key:
            raise UserError(
                f"models.{key}.api_key_env: the environment variable {model.api_key_env} is not set: export it "
                "with the server's API key"
            )
    try:
        facts = server_facts(model.base_url, api_key)
    except Failure as f:
        message = f.message.replace(api_key, f"[redacted {model.api_key_env}]") if api_key else f.message
        raise UserError(
            f"models.{key}: the server at {model.base_url} cannot serve the run ({message}): start it, or "
            "fix base_url" + (" and the key in " + str(model.api_key_env) if f.status in (401, 403) else "")
        ) from None
    return {"kind": "OpenAI-compatible server", "base_url": model.base_url, **facts}


def server_revision(facts: dict[str, Any]) -> str:
    """A revision for a model behind an external server: a hash of what the server says it serves."""
    text = json.dumps([facts.get("models"), facts.get("version")], sort_keys=True, default=str)
    return "server:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def gguf_chat_template_sha256(path: Path) -> str | None:
    """The hash of the chat template stored in a GGUF's metadata (the one llama.cpp applies), or None."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
        if field is None:
            return None
        text = field.contents() if hasattr(field, "contents") else bytes(field.parts[field.data[0]]).decode()
        return hashlib.sha256(str(text).encode()).hexdigest()[:16]
    except Exception:
        return None
