"""The on-disk caches' common ground: one SQLite file in WAL mode, keyed lookups in chunks, atomic batches.

WAL commits atomically, so a process killed mid-write leaves either the whole batch or none of it; several
processes may read and write one file (writers wait on a lock). The connection opens lazily, and again in a
forked child, which must never use its parent's.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

LOOKUP_CHUNK = 500
"""Keys per SELECT: well under SQLite's limit on bound parameters in every version."""


class SqliteStore:
    schemas: tuple[str, ...] = ()
    """`CREATE TABLE IF NOT EXISTS` statements, run when a connection opens."""

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
            for schema in self.schemas:
                conn.execute(schema)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def select_in(self, query: str, fixed: Sequence[Any], keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """The rows of `query` (which ends `... IN ({marks})`) for every key, asked `LOOKUP_CHUNK` at a time."""
        db = self._db()
        for i in range(0, len(keys), LOOKUP_CHUNK):
            part = list(keys[i : i + LOOKUP_CHUNK])
            yield from db.execute(query.format(marks=",".join("?" * len(part))), (*fixed, *part))

    def write_many(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        """`statement` for every row, in one transaction: all of them are written or none."""
        if rows:
            self.write_all([(statement, rows)])

    def write_all(self, batches: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Each statement for each of its rows, all in one transaction."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement, rows in batches:
                db.executemany(statement, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
