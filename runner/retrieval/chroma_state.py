"""A collection's state in an embedded Chroma store, read without chromadb: what lets a run over an unchanged
corpus leave Chroma shut.

Importing chromadb and opening a PersistentClient is half a second of a warm `pov run`, and Chroma rewrites its
files whenever a client opens them, so their times and bytes cannot say "unchanged". Its SQLite file can:
every write to a collection appends to the collection's log (`embeddings_queue`, one sequence number per
record), every metadata change rewrites its rows in `collection_metadata`, and both are committed before
Chroma's call returns. `read_state` opens that file read-only with the standard library and takes from it
the collection's metadata (the manifest of runner.retrieval.indexing) and a token: a hash of the collection's
id, the last sequence number of its log and of its segments, its record count and all of its metadata. Any
write, by pov-runner, another version of it or another program, changes the token; reads never do.

This reads Chroma's own tables, which are not its API: a store whose tables are not as expected (another
Chroma version) has no state here (None), and every caller then opens Chroma as before. The test suite's
run over an unchanged corpus fails if that starts happening. A server store (`corpus.chroma_url`) has no
state here either.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATABASE = ("default_tenant", "default_database")
"""Where `chromadb.PersistentClient(path)` keeps collections unless told otherwise, as pov-runner does."""


@dataclass(frozen=True)
class CollectionState:
    token: str
    """Changes with every write to the collection: what answers kept from it are keyed by."""
    metadata: dict[str, Any]
    count: int
    """Records in the collection."""


_COLLECTION = """
SELECT c.id FROM collections c JOIN databases d ON c.database_id = d.id
WHERE c.name = ? AND d.tenant_id = ? AND d.name = ?
"""
_METADATA = """
SELECT key, str_value, int_value, float_value, bool_value FROM collection_metadata
WHERE collection_id = ? ORDER BY key
"""
_SEGMENTS = "SELECT id, scope FROM segments WHERE collection = ?"
_LOG_END = "SELECT MAX(seq_id) FROM embeddings_queue WHERE topic = ? OR topic LIKE ?"
_APPLIED = "SELECT seq_id FROM max_seq_id WHERE segment_id = ?"
_COUNT = "SELECT COUNT(*) FROM embeddings WHERE segment_id = ?"


def _value(s: Any, i: Any, f: Any, b: Any) -> Any:
    if b is not None:
        return bool(b)
    for v in (s, i, f):
        if v is not None:
            return v
    return None


def read_state(store: Path, name: str) -> CollectionState | None:
    """The collection's state in the embedded store at `store`; None when there is no such store or
    collection, or its tables are not as this code knows them."""
    db = store / "chroma.sqlite3"
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return None
    try:
        row = con.execute(_COLLECTION, (name, *DATABASE)).fetchone()
        if row is None:
            return None
        cid = str(row[0])
        metadata = {str(k): _value(s, i, f, b) for k, s, i, f, b in con.execute(_METADATA, (cid,))}
        segments = {str(scope): str(sid) for sid, scope in con.execute(_SEGMENTS, (cid,))}
        if "METADATA" not in segments:
            return None
        log_end = con.execute(_LOG_END, (cid, f"%/{cid}")).fetchone()[0]
        applied = [con.execute(_APPLIED, (sid,)).fetchone() for sid in sorted(segments.values())]
        count = int(con.execute(_COUNT, (segments["METADATA"],)).fetchone()[0])
    except (sqlite3.Error, TypeError, ValueError):
        return None
    finally:
        con.close()
    token = hashlib.sha256(
        json.dumps(
            [cid, log_end, [a[0] if a else None for a in applied], count, metadata], default=str
        ).encode()
    ).hexdigest()[:32]
    return CollectionState(token, metadata, count)
