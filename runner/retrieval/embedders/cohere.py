"""`cohere` provider: the Cohere embed API through the official SDK (`ClientV2.embed`); `CohereAPI`, the
client and retry loop it shares with the Cohere rerank provider.

Documents are sent with `input_type="search_document"`, queries and POV statements with
`"search_query"`, always `embedding_types=["float"]`, at most 96 texts per request (the API's limit).
A 429 or 5xx answer (or a dropped connection) is retried with exponential backoff, honouring
`Retry-After`; the SDK's own retries are turned off so that every request is counted here. An address
that cannot be connected to at all (closed port, unknown host, no route within CONNECT_TIMEOUT_S) is tried
CONNECT_RETRIES more times only, then it is a UserError naming the URL: it will not come back in a minute.

The key comes from `CO_API_KEY` (a clear UserError when unset) and the base URL from `CO_API_URL` when
set. The key is never printed or logged: error messages are scrubbed of it before they are raised, and
nothing but vectors and text hashes reaches the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from runner.errors import UserError
from runner.redaction import redact
from runner.retrieval.embedders.base import Kind, check_kind, normalize_rows
from runner.spec import Embedder as EmbedderSpec

MAX_BATCH = 96
DEFAULT_URL = "https://api.cohere.com"
"""Where the SDK sends requests when CO_API_URL is unset."""
CONNECT_TIMEOUT_S = 5.0
CONNECT_RETRIES = 2
INPUT_TYPES: dict[str, str] = {"document": "search_document", "query": "search_query"}
log = logging.getLogger(__name__)


class CohereError(RuntimeError):
    """The API kept failing, or answered something unusable."""


T = TypeVar("T")


class CohereAPI:
    """One model of the Cohere API through the official SDK: the key, the base URL, a connect timeout, and
    the retry loop every request goes through (`request`). CohereEmbedder and the Cohere rerank provider
    (runner.retrieval.rerankers.cohere) are built on it."""

    what = "request"
    """What a request does, as messages name it (`embed`, `rerank`)."""

    def __init__(
        self,
        model: str,
        *,
        role: str,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
        connect_retries: int = CONNECT_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = os.environ.get("CO_API_KEY", "").strip()
        if not key:
            raise UserError(
                f"CO_API_KEY is not set: the cohere {role} (model {model!r}) needs an API key "
                "in the environment (export CO_API_KEY=...); it is never stored or printed"
            )
        import cohere
        import httpx

        self.model = model
        self.connect_retries = connect_retries
        # base_url must be read now: the SDK's default argument read CO_API_URL once, at import time.
        self.base_url = os.environ.get("CO_API_URL", "").strip() or DEFAULT_URL
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self._sleep = sleep
        self._key = key
        self.calls = 0
        self.retries = 0
        # Our own httpx client, for a connect timeout of seconds (the SDK's `timeout` bounds only the
        # whole request); with it and no `timeout`, the SDK leaves each request to the client's settings.
        http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S))
        self._client = cohere.ClientV2(api_key=key, base_url=self.base_url, httpx_client=http, max_retries=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def request(self, send: Callable[[], T]) -> T:
        """`send()` (one SDK call), retried on 429, 5xx and dropped connections; see the module docstring."""
        attempt = 0
        while True:
            self.calls += 1
            try:
                return send()
            except Exception as e:  # the SDK raises ApiError subclasses and httpx transport errors
                wait = self._retry_wait(e, attempt)
                if wait is None:
                    raise self._final_error(e, attempt) from None
                attempt += 1
                self.retries += 1
                log.warning(
                    "cohere %s: %s; retry %d/%d in %.1fs",
                    self.what,
                    self._describe(e),
                    attempt,
                    self.max_retries,
                    wait,
                )
                self._sleep(wait)

    @staticmethod
    def _status(e: Exception) -> int | None:
        status = getattr(e, "status_code", None)
        return status if isinstance(status, int) else None

    @staticmethod
    def _unreachable(e: Exception) -> bool:
        """No connection was made at all (closed port, unknown host, no answer to connect)."""
        import httpx

        return isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))

    def _retry_wait(self, e: Exception, attempt: int) -> float | None:
        import httpx

        status = self._status(e)
        retryable = (
            status == 429 or (status is not None and status >= 500) or isinstance(e, httpx.TransportError)
        )
        limit = self.connect_retries if self._unreachable(e) else self.max_retries
        if not retryable or attempt >= min(limit, self.max_retries):
            return None
        wait: float = self.backoff_s * 2**attempt
        headers = getattr(e, "headers", None) or {}
        retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date falls back to the backoff
                wait = max(0.0, float(retry_after))
        return min(self.max_backoff_s, wait)

    def _describe(self, e: Exception) -> str:
        status = self._status(e)
        body: Any = getattr(e, "body", None)
        detail = body.get("message", "") if isinstance(body, dict) else (body or str(e))
        text = f"HTTP {status}: {detail}" if status is not None else f"{e.__class__.__name__}: {e}"
        return self._scrub(str(text))[:500]

    def _final_error(self, e: Exception, attempts: int) -> Exception:
        status = self._status(e)
        if self._unreachable(e):
            return UserError(
                redact(
                    f"cannot reach the Cohere API at {self.base_url}: {self._describe(e)}; check CO_API_URL "
                    f"(unset, it is {DEFAULT_URL}) and your network"
                )
            )
        if status in (401, 403):
            return UserError(f"Cohere refused the API key in CO_API_KEY ({self._describe(e)})")
        if status is not None and 400 <= status < 500 and status != 429:
            return UserError(
                f"Cohere rejected the {self.what} request for model {self.model!r} ({self._describe(e)})"
            )
        return CohereError(f"cohere {self.what} failed after {attempts} retries: {self._describe(e)}")


class CohereEmbedder(CohereAPI):
    provider = "cohere"
    what = "embed"
    counts_tokens = False
    """Cohere's tokenizers are not available offline: which chunks the API cuts is not known here."""

    def __init__(
        self,
        spec: EmbedderSpec,
        *,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
        connect_retries: int = CONNECT_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            spec.model,
            role="embedder",
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            timeout_s=timeout_s,
            connect_retries=connect_retries,
            sleep=sleep,
        )
        self.batch_size = min(spec.batch_size, MAX_BATCH)

    def embed(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        check_kind(kind)
        texts = list(texts)
        parts = [
            self._embed_batch(texts[i : i + self.batch_size], INPUT_TYPES[kind])
            for i in range(0, len(texts), self.batch_size)
        ]
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return normalize_rows(np.concatenate(parts))

    def _embed_batch(self, texts: list[str], input_type: str) -> np.ndarray:
        resp = self.request(
            lambda: self._client.embed(
                model=self.model,
                texts=texts,
                input_type=input_type,
                embedding_types=["float"],
            )
        )
        vecs = getattr(resp.embeddings, "float_", None)
        if vecs is None or len(vecs) != len(texts):
            raise CohereError(
                f"cohere embed answered {0 if vecs is None else len(vecs)} float embeddings "
                f"for {len(texts)} texts"
            )
        return np.asarray(vecs, dtype=np.float32)

    def token_counts(self, texts: Sequence[str]) -> tuple[list[int], int]:
        raise NotImplementedError("cohere embeddings: tokens are not counted locally")
