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
import struct
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
        # Not where the file is, nor how many threads this machine gives it: neither changes an answer.
        settings = {
            k: v
            for k, v in asdict(managed_settings(model, threads=1)).items()
            if k not in ("threads", "gguf")
        }
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
    """The hash of the chat template in a GGUF's metadata (the one llama.cpp applies), or None."""
    try:
        text = gguf_metadata_string(path, "tokenizer.chat_template")
    except (OSError, ValueError, struct.error):
        return None
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""Sizes of GGUF's fixed-size metadata types, by type id (8 is a string, 9 an array)."""


def gguf_metadata_string(path: Path, wanted: str) -> str | None:
    """The string value of metadata key `wanted` in a GGUF file, read from its header alone (the `gguf`
    package parses every tensor's description first: seconds for a small model)."""
    with path.open("rb") as fh:
        magic, version, _tensors, count = struct.unpack("<4sIQQ", fh.read(24))
        if magic != b"GGUF" or version < 2:
            raise ValueError(f"{path}: not a GGUF file of version 2 or later")

        def string() -> bytes:
            (n,) = struct.unpack("<Q", fh.read(8))
            return fh.read(n)

        def skip(kind: int) -> None:
            if kind in _SCALARS:
                fh.seek(_SCALARS[kind], 1)
            elif kind == 8:
                (n,) = struct.unpack("<Q", fh.read(8))
                fh.seek(n, 1)
            elif kind == 9:
                inner, n = struct.unpack("<IQ", fh.read(12))
                if inner in _SCALARS:
                    fh.seek(_SCALARS[inner] * n, 1)
                else:
                    for _ in range(n):
                        skip(inner)
            else:
                raise ValueError(f"{path}: unknown GGUF metadata type {kind}")

        for _ in range(count):
            key = string().decode("utf-8", errors="replace")
            (kind,) = struct.unpack("<I", fh.read(4))
            if key == wanted and kind == 8:
                return string().decode("utf-8", errors="replace")
            skip(kind)
    return None
