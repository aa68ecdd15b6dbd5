"""On-disk embedding cache: one SQLite file, keyed by (provider, model, kind, sha256 of the text).

SQLite in WAL mode commits atomically, so a process killed mid-write leaves either the whole batch or none
of it, never a torn vector; several processes may read and write the same file (writers wait on a lock).
Vectors are stored as raw float32 bytes with their dimension.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

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
_LOOKUP_CHUNK = 500
"""Keys per SELECT: well under SQLite's limit on bound parameters in every version."""


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Get and put unit vectors by key. Opens its connection lazily, and again in a forked child."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.execute(_TOKENS_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get_many(self, provider: str, model: str, kind: str, shas: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        db = self._db()
        for i in range(0, len(shas), _LOOKUP_CHUNK):
            part = list(shas[i : i + _LOOKUP_CHUNK])
            marks = ",".join("?" * len(part))
            rows = db.execute(
                f"SELECT sha, dim, vec FROM embeddings WHERE provider=? AND model=? AND kind=? AND sha IN ({marks})",
                (provider, model, kind, *part),
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
        if not rows:
            return
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def get_tokens(self, provider: str, model: str, shas: Sequence[str]) -> dict[str, tuple[int, int]]:
        """sha -> (tokens, window) of the texts counted before."""
        out: dict[str, tuple[int, int]] = {}
        db = self._db()
        for i in range(0, len(shas), _LOOKUP_CHUNK):
            part = list(shas[i : i + _LOOKUP_CHUNK])
            rows = db.execute(
                f"SELECT sha, tokens, window FROM tokens WHERE provider=? AND model=? AND sha IN ({','.join('?' * len(part))})",
                (provider, model, *part),
            )
            out.update((sha, (int(n), int(w))) for sha, n, w in rows)
        return out

    def put_tokens(self, provider: str, model: str, items: Iterable[tuple[str, tuple[int, int]]]) -> None:
        rows = [(provider, model, sha, int(n), int(w)) for sha, (n, w) in items]
        if not rows:
            return
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def count(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
