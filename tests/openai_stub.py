"""A local OpenAI-compatible stub server (standard library) for the `openai` backend's fault tests: it answers
`/v1/chat/completions`, `/v1/completions` and `/v1/models`, and misbehaves on request. A prompt containing a
marker picks the misbehaviour:

    [429]        HTTP 429 (with Retry-After: 0) the first time, then an answer
    [503x9]      HTTP 503 (with Retry-After: 0) every time
    [500]        HTTP 500 with an error message
    [oom]        HTTP 500 whose message says CUDA ran out of memory
    [bad]        200 with a body that is not JSON
    [nochoice]   200 with JSON that has no choices
    [stall]      headers, then nothing (until the test ends)
    [reset]      the connection closed without an answer the first time, then an answer
    [echo-key]   HTTP 500 whose message quotes the Authorization header it got

Anything else is answered `echo: <the prompt's last word>` after `delay_s`, with usage counts. It records
every request (path, body, Authorization header) and the most requests it held at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Stub:
    def __init__(self, delay_s: float = 0.2, key: str | None = None) -> None:
        self.delay_s, self.key = delay_s, key
        self.model_id = "stub-model"
        """What `/v1/models` lists (a test changes it to see the manifest's drift)."""
        self.requests: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if stub.key is None or self.headers.get("Authorization") == f"Bearer {stub.key}":
                    return True
                self._send(401, json.dumps({"error": {"message": "Invalid API Key"}}).encode())
                return False

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    data = {"object": "list", "data": [{"id": stub.model_id, "created": time.time()}]}
                    self._send(200, json.dumps(data).encode())
                else:
                    self._send(404, b'{"error": {"message": "no such path"}}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with stub.lock:
                    stub.requests.append(
                        {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                    )
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    if self._authorized():
                        self._answer(body)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def _answer(self, body: dict[str, Any]) -> None:
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                marker = prompt.split("]")[0] + "]" if prompt.startswith("[") else ""
                with stub.lock:
                    stub.seen[marker] += 1
                    times = stub.seen[marker]
                if marker == "[429]" and times == 1:
                    return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0"})
                if marker == "[503x9]":
                    return self._send(503, b'{"error": {"message": "loading model"}}', {"Retry-After": "0"})
                if marker == "[500]":
                    return self._send(500, b'{"error": {"message": "the sampler broke"}}')
                if marker == "[oom]":
                    return self._send(500, b'{"error": {"message": "CUDA out of memory. Tried to allocate"}}')
                if marker == "[echo-key]":
                    said = json.dumps({"error": {"message": f"rejected {self.headers.get('Authorization')}"}})
                    return self._send(500, said.encode())
                if marker == "[bad]":
                    return self._send(200, b"<html>gateway</html>")
                if marker == "[nochoice]":
                    return self._send(200, b'{"object": "chat.completion", "choices": []}')
                if marker == "[stall]":
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.flush()
                    stub.release.wait(60)
                    return None
                if marker == "[reset]" and times == 1:
                    self.close_connection = True
                    self.connection.close()
                    return None
                time.sleep(stub.delay_s)
                text = "echo: " + prompt.split()[-1]
                message = {"role": "assistant", "content": text}
                answer = {
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]
                    if chat
                    else [{"index": 0, "text": text, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 3},
                }
                return self._send(200, json.dumps(answer).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop listening: later requests are refused."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
