"""On-disk embedding cache: one SQLite file, keyed by (provider, model, kind, sha256 of the text).

SQLite in WAL mode commits atomically, so a process killed mid-write leaves either the whole batch or none
of it, never a torn vector; several processes may read and write the same file (writers wait on a lock).
Vectors are stored as raw float32 bytes with their dimension.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from runner.retrieval.sqlite_store import SqliteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    sha TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vec BLOB NOT NULL,
    PRIMARY KEY (provider, model, kind, sha)
) WITHOUT ROWID
"""
_TOKENS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    sha TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    window INTEGER NOT NULL,
    PRIMARY KEY (provider, model, sha)
) WITHOUT ROWID
"""
"""How many tokens a document is to a model, and the model's window: so that knowing which chunks the
embedder cut short never needs the model again."""


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache(SqliteStore):
    """Get and put unit vectors by key (and documents' token counts). Opens its connection lazily, and again
    in a forked child."""

    schemas = (_SCHEMA, _TOKENS_SCHEMA)

    def get_many(self, provider: str, model: str, kind: str, shas: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        rows = self.select_in(
            "SELECT sha, dim, vec FROM embeddings WHERE provider=? AND model=? AND kind=? AND sha IN ({marks})",
            (provider, model, kind),
            shas,
        )
        for sha, dim, blob in rows:
            vec = np.frombuffer(blob, dtype=np.float32)
            if vec.shape == (dim,):
                out[sha] = vec
        return out

    def put_many(self, provider: str, model: str, kind: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        rows = [
            (provider, model, kind, sha, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes())
            for sha, v in items
        ]
        self.write_many("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", rows)

    def get_tokens(self, provider: str, model: str, shas: Sequence[str]) -> dict[str, tuple[int, int]]:
        """sha -> (tokens, window) of the texts counted before."""
        rows = self.select_in(
            "SELECT sha, tokens, window FROM tokens WHERE provider=? AND model=? AND sha IN ({marks})",
            (provider, model),
            shas,
        )
        return {sha: (int(n), int(w)) for sha, n, w in rows}

    def put_tokens(self, provider: str, model: str, items: Iterable[tuple[str, tuple[int, int]]]) -> None:
        rows = [(provider, model, sha, int(n), int(w)) for sha, (n, w) in items]
        self.write_many("INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?)", rows)

    def count(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
