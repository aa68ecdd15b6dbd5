"""The stamp of a collection's last complete ingest, and stage 1's answers kept under it: a run over an unchanged
corpus with questions asked before leaves Chroma shut, gives what Chroma would, and never outlives a write.
Real Chroma (PersistentClient) and the real MiniLM throughout."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import runner.retrieval.indexing as indexing
from runner.retrieval import Store, ingest, open_retriever
from runner.retrieval.stamp import ingest_lock
from runner.spec import load_spec

RETRIEVE = textwrap.dedent(
    """
    import json, sys
    from runner.retrieval import Store, open_retriever
    from runner.spec import load_spec
    if sys.argv[2] == "chroma":  # as if the collection had no stamp: every answer comes from Chroma
        Store.stamp = lambda self: None
    exp = load_spec(sys.argv[1])
    keys = [(q, p, (15, 10, 5)) for q in exp.questions for p in exp.pov_sets]
    got = open_retriever(exp).retrieve(keys)
    print(json.dumps([[got[k].to_dict() for k in keys], "chromadb" in sys.modules]))
    """
)


def retrieve_in_a_new_process(spec: Path, source: str = "stamped") -> tuple[list[dict[str, Any]], bool]:
    """Every key's retrieval as a `pov run` would do it (ingest first), and whether chromadb was imported.
    A new process each time: an embedded Chroma client does not see another process's writes."""
    proc = subprocess.run(
        [sys.executable, "-c", RETRIEVE, str(spec), source], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    results, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    return results, imported


def keys_of(spec: Path) -> list[tuple[str, str, tuple[int, int, int]]]:
    exp = load_spec(spec)
    return [(q, p, (15, 10, 5)) for q in exp.questions for p in exp.pov_sets]


def from_chroma(spec: Path) -> list[dict[str, Any]]:
    """The same retrievals straight from Chroma."""
    return retrieve_in_a_new_process(spec, "chroma")[0]


def tokens_in_cache(project: Path) -> set[str]:
    with sqlite3.connect(project / ".pov" / "cache" / "hits.sqlite") as con:
        return {row[0] for row in con.execute("SELECT DISTINCT token FROM hits")}


def test_a_run_over_an_unchanged_corpus_answers_as_chroma_without_opening_it(brics_project: Path) -> None:
    spec = brics_project / "experiments" / "quickstart.yaml"
    ingest(load_spec(spec))
    stamp = Store(load_spec(spec)).stamp()
    assert stamp is not None and stamp.count == len(
        Store(load_spec(spec)).stored(Store(load_spec(spec)).collection())
    )

    first, imported = retrieve_in_a_new_process(spec)  # asks Chroma, keeps its answers
    assert imported
    again, imported = retrieve_in_a_new_process(spec)
    assert not imported, "a retrieval whose answers are kept under the current stamp opened Chroma"
    assert again == first == from_chroma(spec)
    assert tokens_in_cache(brics_project) == {stamp.token}


def test_an_edit_writes_a_new_stamp_and_no_answer_of_the_old_one_is_used(brics_project: Path) -> None:
    spec = brics_project / "experiments" / "quickstart.yaml"
    ingest(load_spec(spec))
    before, _ = retrieve_in_a_new_process(spec)
    old = Store(load_spec(spec)).stamp()
    assert old is not None

    # The files' texts change, and so do most chunk ids: an answer of the old stamp would name gone chunks.
    corpus = brics_project / "data" / "brics"
    for path in corpus.glob("*.md"):
        path.write_text(path.read_text().replace(" the ", " the very "))
    after, imported = retrieve_in_a_new_process(spec)  # ingests the edit first, as `pov run` does
    new = Store(load_spec(spec)).stamp()
    assert imported and new is not None and new.token != old.token
    assert after == from_chroma(spec)
    stored = set(Store(load_spec(spec)).stored(Store(load_spec(spec)).collection()))
    assert {i for r in after for s in r["stages"] for i in s["ids"]} <= stored
    assert not {i for r in before for s in r["stages"] for i in s["ids"]} <= stored
    assert tokens_in_cache(brics_project) == {new.token}  # the old stamp's rows are gone


def test_an_ingest_killed_mid_write_leaves_no_stamp_and_the_next_one_finishes(
    brics_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = brics_project / "experiments" / "quickstart.yaml"
    ingest(load_spec(spec))
    path = brics_project / "data" / "brics" / "04_japan_alliances_trade.md"
    path.write_text(path.read_text().replace("Japan", "Nippon"))

    real_write = indexing._write

    def dies_after_the_first_write(*args: Any) -> Any:
        store = args[0]
        col = store.collection()
        col.modify(metadata={**col.metadata, "pov.state": "writing"})
        raise KeyboardInterrupt  # killed here: the collection is half-written

    monkeypatch.setattr(indexing, "_write", dies_after_the_first_write)
    with pytest.raises(KeyboardInterrupt):
        ingest(load_spec(spec))
    assert Store(load_spec(spec)).stamp() is None

    monkeypatch.setattr(indexing, "_write", real_write)
    retriever = open_retriever(load_spec(spec))  # ingests: finds the collection half-written, finishes it
    stamp = Store(load_spec(spec)).stamp()
    assert stamp is not None and stamp.metadata["pov.state"] == "complete"
    assert Store(load_spec(spec)).metadata()["pov.state"] == "complete"
    got = retriever.retrieve(keys_of(spec))
    assert [got[k].to_dict() for k in keys_of(spec)] == from_chroma(spec)


INGEST = textwrap.dedent(
    """
    import sys, time
    from runner.retrieval import ingest
    from runner.spec import load_spec
    ingest(load_spec(sys.argv[1]))
    print(time.time())
    """
)


def test_one_ingest_of_a_collection_at_a_time(brics_project: Path) -> None:
    """Two processes ingesting one collection would each remove and write its stamp; the second waits."""
    spec = brics_project / "experiments" / "quickstart.yaml"
    exp = load_spec(spec)
    ingest(exp)  # so that the second ingest has nothing to write: alone, it ends in a few seconds
    store = Store(exp)
    with ingest_lock(store.path, store.name) as locked:
        assert locked
        proc = subprocess.Popen(
            [sys.executable, "-c", INGEST, str(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(10)
        released = time.time()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert float(out.strip().splitlines()[-1]) >= released
    assert Store(exp).stamp() is not None


def test_a_server_store_is_never_stamped(brics_project: Path) -> None:
    """Other clients may write to a `chroma run` server: its collections get no stamp and no lock."""
    exp = load_spec(
        brics_project / "experiments" / "quickstart.yaml", ["corpus.chroma_url=http://127.0.0.1:9"]
    )
    store = Store(exp)
    with store.ingesting() as stamping:
        assert stamping is False
    assert store.stamp() is None
