"""A collection's state read without chromadb, and stage 1's answers kept under its token: a run over an
unchanged corpus with questions asked before leaves Chroma shut, gives what Chroma would, and any write to the
collection (by pov-runner or by another program) ends the answers kept from before it. Real Chroma
(PersistentClient) and the real MiniLM throughout; every retrieval in a new process, as a user's `pov run`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from runner.retrieval import Store, ingest
from runner.retrieval.chroma_state import read_state
from runner.spec import load_spec

RETRIEVE = textwrap.dedent(
    """
    import json, sys
    from runner.retrieval import Store, open_retriever
    from runner.spec import load_spec
    if sys.argv[2] == "chroma":  # as if the state could not be read: every answer comes from Chroma
        Store.state = lambda self: None
    exp = load_spec(sys.argv[1])
    keys = [(q, p, (15, 10, 5)) for q in exp.questions for p in exp.pov_sets]
    got = open_retriever(exp).retrieve(keys)
    print(json.dumps([[got[k].to_dict() for k in keys], "chromadb" in sys.modules]))
    """
)


def retrieve(spec: Path, source: str = "kept") -> tuple[list[dict[str, Any]], bool]:
    """Every key's retrieval as `pov run` does it (ingest first), and whether chromadb was imported. A new
    process each time: an embedded Chroma client does not see another process's writes."""
    proc = subprocess.run(
        [sys.executable, "-c", RETRIEVE, str(spec), source], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    results, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    return results, imported


def from_chroma(spec: Path) -> list[dict[str, Any]]:
    return retrieve(spec, "chroma")[0]


def state_of(spec: Path) -> Any:
    store = Store(load_spec(spec))
    return read_state(store.path, store.name)


def tokens_kept(project: Path) -> set[str]:
    with sqlite3.connect(project / ".pov" / "cache" / "hits.sqlite") as con:
        return {row[0] for row in con.execute("SELECT DISTINCT token FROM hits")}


def ids_in(results: list[dict[str, Any]]) -> set[str]:
    return {i for r in results for stage in r["stages"] for i in stage["ids"]}


def test_a_run_over_an_unchanged_corpus_answers_as_chroma_without_opening_it(brics_project: Path) -> None:
    spec = brics_project / "experiments" / "quickstart.yaml"
    ingest(load_spec(spec))
    state = state_of(spec)
    assert state is not None
    assert state.metadata == Store(load_spec(spec)).metadata()  # what chromadb itself says
    assert state.count == Store(load_spec(spec)).collection().count()

    first, imported = retrieve(spec)  # asks Chroma, keeps its answers
    assert imported
    again, imported = retrieve(spec)
    assert not imported, "a retrieval of answers kept under the collection's current token opened Chroma"
    assert again == first == from_chroma(spec)
    assert state_of(spec) == state, "reading the collection (Chroma opened three times) changed its token"
    assert tokens_kept(brics_project) == {state.token}


def test_an_edit_ingested_ends_the_answers_kept_from_before(brics_project: Path) -> None:
    spec = brics_project / "experiments" / "quickstart.yaml"
    before, _ = retrieve(spec)
    old = state_of(spec)
    for path in (brics_project / "data" / "brics").glob("*.md"):  # most chunk ids change
        path.write_text(path.read_text().replace(" the ", " the very "))
    after, imported = retrieve(spec)  # ingests the edit first, as `pov run` does
    new = state_of(spec)
    assert imported and new is not None and new.token != old.token
    assert after == from_chroma(spec)
    stored = set(Store(load_spec(spec)).stored(Store(load_spec(spec)).collection()))
    assert ids_in(after) <= stored and not ids_in(before) <= stored
    assert tokens_kept(brics_project) == {new.token}  # the old token's rows are gone


WRITE_ELSEWHERE = textwrap.dedent(
    """
    import sys, chromadb
    col = chromadb.PersistentClient(path=sys.argv[1]).get_collection(sys.argv[2])
    col.delete(ids=[sys.argv[3]])
    """
)


def test_a_write_by_another_program_is_seen(brics_project: Path) -> None:
    """Chroma's own record of writes decides, not pov-runner's: a chunk deleted by another program (through
    chromadb, metadata untouched) is never served from the answers kept from before."""
    spec = brics_project / "experiments" / "quickstart.yaml"
    before, _ = retrieve(spec)
    best = before[0]["stages"][0]["ids"][0]
    store = Store(load_spec(spec))
    old = state_of(spec)
    subprocess.run(
        [sys.executable, "-c", WRITE_ELSEWHERE, str(store.path), store.name, best], check=True, timeout=120
    )
    assert state_of(spec).token != old.token
    after, imported = retrieve(spec)
    assert imported and best not in ids_in(after)
    assert after == from_chroma(spec)


def test_no_state_for_a_server_store_or_unknown_tables(brics_project: Path, tmp_path: Path) -> None:
    """Other clients may write to a `chroma run` server; a file whose tables are not Chroma's as this code
    knows them has no state either (then Chroma is opened, as before)."""
    exp = load_spec(
        brics_project / "experiments" / "quickstart.yaml", ["corpus.chroma_url=http://127.0.0.1:9"]
    )
    assert Store(exp).state() is None
    with sqlite3.connect(tmp_path / "chroma.sqlite3") as con:
        con.execute("CREATE TABLE collections (id TEXT, name TEXT)")
    assert read_state(tmp_path, "brics-minilm") is None
    assert read_state(tmp_path / "absent", "brics-minilm") is None
