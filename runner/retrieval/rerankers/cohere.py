"""`cohere` query reranker: Cohere's rerank endpoint through the official SDK (`ClientV2.rerank`, `POST
/v2/rerank`), with the key, base URL, connect timeout and retries of the Cohere embedder (`CohereAPI`).

Each request sends one question and at most `batch_size` (<= 1000, the API's advice) documents and asks for
every result; the answer lists `{index, relevance_score}` best first, and the scores are put back in the
order the documents were sent. Relevance scores lie in [0, 1] but are calibrated per model: they are not
comparable across rerank model generations (say rerank-english-v3.0 and rerank-v3.5), so the model id is
part of every cached score and of the cell ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from runner.retrieval.embedders.cohere import CONNECT_RETRIES, CohereAPI, CohereError
from runner.spec import QueryReranker as QueryRerankerSpec

MAX_DOCUMENTS = 1000


class CohereReranker(CohereAPI):
    provider = "cohere"
    what = "rerank"

    def __init__(
        self,
        spec: QueryRerankerSpec,
        *,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        connect_retries: int = CONNECT_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            spec.model,
            role="query reranker",
            max_retries=max_retries,
            backoff_s=backoff_s,
            connect_retries=connect_retries,
            sleep=sleep,
        )
        self.batch_size = min(spec.batch_size, MAX_DOCUMENTS)

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        docs = list(documents)
        out = np.zeros(len(docs), dtype=np.float64)
        for start in range(0, len(docs), self.batch_size):
            part = docs[start : start + self.batch_size]
            resp = self.request(
                lambda part=part: self._client.rerank(  # type: ignore[misc]
                    model=self.model, query=query, documents=part, top_n=len(part)
                )
            )
            seen = set()
            for item in resp.results:
                if not 0 <= item.index < len(part) or item.index in seen:
                    raise CohereError(f"cohere rerank answered index {item.index} for {len(part)} documents")
                seen.add(item.index)
                out[start + item.index] = float(item.relevance_score)
            if len(seen) != len(part):
                raise CohereError(f"cohere rerank scored {len(seen)} of {len(part)} documents")
        return out
