"""The spec's `models` entries: a model to load or an inference server to talk to, and a llama.cpp server
pov-runner starts (pydantic models, a docstring per field)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from runner.spec.fields import Filled, Setting, Strict


class ManagedServer(Strict):
    """A llama.cpp server that pov-runner starts for a GGUF model (through `xllamacpp`, the `llamacpp` extra),
    on 127.0.0.1, and stops when the run ends."""

    gguf: Filled
    """The GGUF file (relative to the spec file), or `builtin:smollm2-135m-instruct`."""
    parallel: int | None = Field(None, ge=1, le=256)
    """Requests the server decodes together (its slots, each `max_seq_length` tokens of context); default
    the model's `max_concurrency`."""
    threads: int | None = Field(None, ge=1, le=1024)
    """CPU threads the server generates with; default every core but one (the run's own process needs it)."""
    startup_timeout_s: float = Field(300.0, gt=0)
    """Longest wait for the server to load the model and answer; past it the cells are recorded as crashed."""


def _base_url(v: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v.strip())
        _ = parts.port  # a port that is not a number raises here
    except ValueError as e:
        raise ValueError(f"not a URL ({e}): write http://HOST:PORT/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a URL: write http://HOST:PORT/v1 (the API's address up to its /v1)")
    if parts.password is not None:
        raise ValueError("holds a password: put the key in the variable that api_key_env names instead")
    if parts.query or parts.fragment:
        raise ValueError("has a query or fragment: write the API's address only, e.g. http://HOST:PORT/v1")
    return v.strip().rstrip("/")


def _env_name(v: str) -> str:
    from runner.redaction import is_secret_name

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", v):
        raise ValueError(
            "is the NAME of the environment variable that holds the key (e.g. VLLM_API_KEY), never the key"
        )
    if not is_secret_name(v):
        # Not quoted: a key pasted here by mistake must not reach the terminal.
        raise ValueError(
            "does not read like a credential's name: use one ending in _API_KEY, _KEY or _TOKEN, so that its "
            "value is redacted from every record"
        )
    return v


class Model(Strict):
    backend: str = "transformers"
    """Generation backend: `transformers`, `unsloth`, or `openai` (an OpenAI-compatible server: `base_url`,
    or one pov-runner starts: `server`)."""
    name: Filled
    """Hub name, local directory, or `builtin:tiny-llama` (a tiny random model built locally); for backend
    `openai`, the model as the server knows it (sent as the API's `model`)."""
    revision: Setting | None = None
    """Hub revision (commit) to pin; recorded with each run."""
    load_in_4bit: bool = False
    """Load weights in 4-bit (bitsandbytes; needs a GPU)."""
    max_seq_length: int = Field(2048, ge=16)
    """Longest prompt plus answer, in tokens; longer prompts are truncated from the left."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weight dtype; `auto` is bfloat16 on a GPU that supports it, else float32."""
    device: Setting = "auto"
    """`auto` (a GPU when there is one), `cpu`, or `cuda`."""
    chat_template: bool | None = None
    """Wrap prompts in the tokenizer's chat template; default: when the tokenizer has one. Backend `openai`:
    `false` sends the prompt as a raw completion (`/completions`), else as a chat message."""
    base_url: Annotated[str, AfterValidator(_base_url)] | None = None
    """Backend `openai`: the API's address up to its version, e.g. `http://127.0.0.1:8000/v1` (vLLM, SGLang,
    llama.cpp, Ollama's `/v1`). Leave it out with `server`."""
    api_key_env: Annotated[str, AfterValidator(_env_name)] | None = None
    """Backend `openai`: the name of the environment variable that holds the API key (never the key itself);
    the key is sent only as the `Authorization` header."""
    max_concurrency: int = Field(8, ge=1, le=1024)
    """Backend `openai`: requests in flight at once; the server batches them (continuous batching)."""
    request_timeout_s: float | None = Field(None, gt=0)
    """Backend `openai`: longest wait for one cell's answer before it is recorded as `timeout`; default
    `limits.cell_timeout_s`."""
    server: ManagedServer | None = None
    """Backend `openai`: a llama.cpp server pov-runner starts (and stops) for a GGUF model, instead of
    `base_url`."""
