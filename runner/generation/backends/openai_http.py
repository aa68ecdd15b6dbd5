"""The OpenAI-compatible API over HTTP, with the standard library: one request that another thread can abandon,
its failures sorted into what is worth retrying and what is a crash, the request body built from the
spec's generation parameters, and the answer read back.

`http.client`, not the `openai` SDK or httpx: each request must be abandonable at its cell's deadline from
another thread (closing its socket, which the SDK and httpx do not offer), retried only where a retry can
help, and every failure turned into a crash cause; the SDK brings retries and timeouts of its own that
would have to be turned off one by one, and a dependency tree for what is one JSON POST.

Generation parameters: `max_new_tokens` → `max_tokens`, `temperature`, `seed`, `top_p` (sampling only);
`min_new_tokens` → `min_tokens` and `repetition_penalty` → `repetition_penalty` / `repeat_penalty` (vLLM's and
llama.cpp's extensions, sent only when set, since OpenAI's own API refuses unknown fields).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import re
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from runner.spec import Generation, Model

RETRYABLE_STATUS = frozenset({429, 503})
"""Too many requests, service unavailable: the server asks to be asked again later."""
MAX_RETRIES = 3
"""Retries of one cell's request (for RETRYABLE_STATUS and a reset connection), within its deadline."""
BACKOFF_S = (0.5, 1.0, 2.0)
MAX_RETRY_AFTER_S = 30.0
MESSAGE_CHARS = 500
_OOM = re.compile(r"out of memory|\bOOM\b|failed to allocate|cudaMalloc|insufficient memory", re.IGNORECASE)
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ECONNREFUSED}


class Failure(Exception):
    """A request that brought no usable answer. `kind`: `refused` (nothing listens there), `reset` (the
    connection broke mid-request), `timeout`, `http` (an error status), `malformed` (a 200 we cannot read)."""

    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.message, self.status, self.retry_after = kind, message, status, retry_after


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str | None
    timings: dict[str, float] = field(default_factory=dict)
    """The server's own measurements where it sends them (llama.cpp's `timings`), as cell metrics."""


class Call:
    """One HTTP request to `base_url` + path, abandonable from another thread (`abort` closes its socket)."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self._key = api_key
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def send(
        self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers in lower case, body). Raises Failure for anything that is not an HTTP answer."""
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=max(timeout_s, 0.001))
        with self._lock:
            if self._aborted:
                raise Failure("timeout", "abandoned at its deadline")
            self._conn = conn
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"  # the only place the key goes
        try:
            conn.request(method, self.prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload
        except ConnectionRefusedError as e:
            raise Failure("refused", f"connection refused ({e.strerror or e})") from None
        except TimeoutError:
            raise Failure("timeout", f"no answer within {timeout_s:.1f} s") from None
        except (ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected) as e:
            if self._aborted:
                raise Failure("timeout", "abandoned at its deadline") from None
            raise Failure("reset", f"the connection broke mid-request ({type(e).__name__}: {e})") from None
        except http.client.HTTPException as e:
            raise Failure("malformed", f"not an HTTP answer ({type(e).__name__}: {e})") from None
        except OSError as e:
            if self._aborted:
                raise Failure("timeout", "abandoned at its deadline") from None
            if isinstance(e, socket.gaierror) or e.errno in _UNREACHABLE:
                raise Failure("refused", f"cannot reach {self.host} ({e.strerror or e})") from None
            raise Failure("reset", f"{type(e).__name__}: {e}") from None
        finally:
            conn.close()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def request_body(model: Model, prompt: str, params: Generation) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of one cell's request: a chat message, or a raw completion with chat_template false.
    The prompt goes in as one user message, as the transformers backend puts it in its chat template."""
    body: dict[str, Any] = {
        "model": model.name,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "seed": params.seed,
        "stream": False,
    }
    if params.temperature > 0:
        body["top_p"] = params.top_p
    if params.min_new_tokens:
        body["min_tokens"] = params.min_new_tokens
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = body["repeat_penalty"] = params.repetition_penalty
    if model.chat_template is False:
        return "/completions", {**body, "prompt": prompt}
    return "/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}


def read_answer(data: bytes, chat: bool) -> Answer:
    """The answer in a 200 response; raises Failure(`malformed`) when it is not one."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise Failure("malformed", f"the answer is not JSON: {_snippet(data)}") from None
    try:
        choice = doc["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError):
        where = "choices[0].message.content" if chat else "choices[0].text"
        raise Failure("malformed", f"the answer has no {where}: {_snippet(data)}") from None
    if text is None:
        text = ""  # a refusal or a tool call: no text, which the checks then judge
    if not isinstance(text, str):
        raise Failure("malformed", f"the answer's text is a {type(text).__name__}: {_snippet(data)}")
    usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
    timings: dict[str, float] = {}
    raw = doc.get("timings")
    if isinstance(raw, dict):
        for key, name in (
            ("prompt_ms", "server_prompt_ms"),
            ("predicted_ms", "server_generate_ms"),
            ("predicted_per_second", "server_tokens_per_s"),
            ("cache_n", "server_cached_tokens"),
        ):
            if isinstance(raw.get(key), (int, float)):
                timings[name] = float(raw[key])
    return Answer(
        text,
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        choice.get("finish_reason") if isinstance(choice, dict) else None,
        timings,
    )


def _count(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and v >= 0 else 0


def error_message(data: bytes) -> str:
    """The server's own words from an error response (OpenAI's `error.message`, else the text), cut short."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        doc = json.loads(data)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:MESSAGE_CHARS]
        if isinstance(err, str):
            return err[:MESSAGE_CHARS]
    return _snippet(data)


def http_cause(message: str) -> str:
    """`cuda_oom` when the server says it ran out of memory, else `exception`."""
    return "cuda_oom" if _OOM.search(message) else "exception"


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    try:
        return min(max(float(headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return None  # an HTTP date: the backoff's own delay stands


def _snippet(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return (text[:MESSAGE_CHARS] + "...") if len(text) > MESSAGE_CHARS else (text or "(empty)")


# -- what the server says about itself (the manifest) --------------------------------------------------------
def server_facts(base_url: str, api_key: str | None, timeout_s: float = 10.0) -> dict[str, Any]:
    """The server's `/models` answer (without its timestamps), its version and the hash of its chat template
    where it exposes them (vLLM `/version`, Ollama `/api/version`, llama.cpp `/props`). Raises Failure when
    `/models` does not answer 200: a server that cannot say what it serves cannot serve the run."""
    status, _, data = Call(base_url, api_key).send("GET", "/models", None, timeout_s)
    if status != 200:
        raise Failure("http", f"HTTP {status}: {error_message(data)}", status)
    try:
        listed = json.loads(data).get("data")
    except (ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list):
        raise Failure("malformed", f"/models has no `data` list: {_snippet(data)}")
    models = sorted(
        ({k: v for k, v in m.items() if k != "created"} for m in listed if isinstance(m, dict)),
        key=lambda m: str(m.get("id")),
    )
    facts: dict[str, Any] = {"models": models, "version": None, "chat_template_sha256": None}
    root = base_url.removesuffix("/v1")
    for path, key in (("/version", "version"), ("/api/version", "version"), ("/props", "build_info")):
        try:
            status, _, data = Call(root, api_key).send("GET", path, None, min(timeout_s, 3.0))
            doc = json.loads(data) if status == 200 else None
        except (Failure, ValueError):
            continue
        if isinstance(doc, dict) and doc.get(key) and facts["version"] is None:
            facts["version"] = str(doc[key])
        if isinstance(doc, dict) and isinstance(doc.get("chat_template"), str):
            facts["chat_template_sha256"] = hashlib.sha256(doc["chat_template"].encode()).hexdigest()[:16]
    return facts
