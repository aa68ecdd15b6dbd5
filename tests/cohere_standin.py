"""A local stand-in for Cohere's `POST /v2/embed` and `POST /v2/rerank`, for driving the real `cohere` SDK in
tests.

Answers in the v2 "embeddings_by_type" format (what `cohere.types.EmbedByTypeResponse` parses):
`{"id", "embeddings": {"float": [[...], ...]}, "texts", "meta": {"api_version", "billed_units"},
"response_type": "embeddings_by_type"}`. Vectors are deterministic functions of (text, input_type), so
documents and queries differ as they do with the real service. `fail_with` queues error statuses to answer
the next requests with (429 carries `Retry-After`), to exercise retries.

Rerank answers as `cohere.v2.types.V2RerankResponse` parses it: `{"id", "results": [{"index",
"relevance_score"}, ...] best first (cut to `top_n`), "meta"}`. The relevance is `fake_relevance`: the share of
the query's words (3+ letters) that the document contains, a deterministic stand-in for a rerank model.
"""

from __future__ import annotations

import hashlib
import json
import re
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


def fake_relevance(query: str, document: str) -> float:
    def words(text: str) -> set[str]:
        return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3}

    q = words(query)
    return len(q & words(document)) / len(q) if q else 0.0


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
            route = self.path.rstrip("/")
            if route not in ("/v2/embed", "/v2/rerank"):
                self._send(404, {"message": f"no route {self.path}"})
            elif status == 429:
                self._send(
                    429, {"message": "You are using a Trial key, which is limited"}, {"retry-after": "0.01"}
                )
            elif status != 200:
                self._send(status, {"message": f"stand-in error {status}"})
            elif route == "/v2/rerank":
                docs = body.get("documents") or []
                scored = [(i, fake_relevance(body.get("query", ""), d)) for i, d in enumerate(docs)]
                scored.sort(key=lambda r: -r[1])
                self._send(
                    200,
                    {
                        "id": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16],
                        "results": [
                            {"index": i, "relevance_score": s}
                            for i, s in scored[: body.get("top_n") or len(docs)]
                        ],
                        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
                    },
                )
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
