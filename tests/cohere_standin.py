"""A local stand-in for Cohere's `POST /v2/embed`, for driving the real `cohere` SDK in tests.

Answers in the v2 "embeddings_by_type" format (what `cohere.types.EmbedByTypeResponse` parses):
`{"id", "embeddings": {"float": [[...], ...]}, "texts", "meta": {"api_version", "billed_units"},
"response_type": "embeddings_by_type"}`. Vectors are deterministic functions of (text, input_type), so
documents and queries differ as they do with the real service. `fail_with` queues error statuses to answer
the next requests with (429 carries `Retry-After`), to exercise retries.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

DIM = 32


def fake_vector(text: str, input_type: str) -> list[float]:
    seed = int(hashlib.sha256(f"{input_type}\0{text}".encode()).hexdigest()[:8], 16)
    return [float(x) for x in np.random.default_rng(seed).standard_normal(DIM)]


@dataclass
class StandIn:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Each request's JSON body, plus `_path` (the URL path) and `_failed` (answered with an error)."""
    fail_with: list[int] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def embed_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not r.get("_failed")]


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                state.auth_headers.append(self.headers.get("authorization", ""))
                status = state.fail_with.pop(0) if state.fail_with else 200
                state.requests.append({**body, "_path": self.path, "_failed": status != 200})
            if self.path.rstrip("/") != "/v2/embed":
                self._send(404, {"message": f"no route {self.path}"})
            elif status == 429:
                self._send(
                    429, {"message": "You are using a Trial key, which is limited"}, {"retry-after": "0.01"}
                )
            elif status != 200:
                self._send(status, {"message": f"stand-in error {status}"})
            else:
                texts = body.get("texts") or []
                self._send(
                    200,
                    {
                        "id": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16],
                        "embeddings": {"float": [fake_vector(t, body.get("input_type", "")) for t in texts]},
                        "texts": texts,
                        "meta": {
                            "api_version": {"version": "2"},
                            "billed_units": {"input_tokens": len(texts)},
                        },
                        "response_type": "embeddings_by_type",
                    },
                )

    return Handler


@contextmanager
def serve() -> Iterator[StandIn]:
    state = StandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
