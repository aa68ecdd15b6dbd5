"""Ingestion into the embedded Chroma store: idempotent, incremental, crash-safe, honest about bad files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from runner.cli import main
from runner.errors import UserError
from runner.retrieval import Store, ingest
from runner.retrieval.chunking import chunk_file
from runner.spec import load_spec, read_corpus

COUNTS = re.compile(r"(chunks|files):\s+added (\d+), updated (\d+), deleted (\d+), unchanged (\d+)")


def run_ingest(
    spec: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[dict[str, dict[str, int]], str]:
    rc = main(["ingest", str(spec), *args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    counts = {
        m[0]: dict(zip(("added", "updated", "deleted", "unchanged"), map(int, m[1:]), strict=True))
        for m in COUNTS.findall(out)
    }
    assert set(counts) == {"chunks", "files"}, out
    return counts, err


def stored(spec: Path, *overrides: str) -> dict[str, dict[str, Any]]:
    """id -> {text, source, position, words} of everything in the spec's collection."""
    store = Store(load_spec(spec, overrides))
    col = store.collection()
    assert col is not None
    got = col.get(include=["documents", "metadatas"])
    return {
        i: {"text": d, **m} for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
    }


def expected(spec: Path) -> dict[str, dict[str, Any]]:
    """What a fresh ingest of the corpus as it is now must store, computed by the chunker alone."""
    exp = load_spec(spec)
    ch = exp.spec.corpus.chunking
    out = {}
    for f in read_corpus(exp.spec.corpus.path, exp.spec.corpus.include).files:
        for c in chunk_file(f, ch.max_words, ch.overlap_words, ch.drop_boilerplate):
            out[c.id] = {"text": c.text, **c.metadata()}
    return out


def by_source(chunks: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for cid, c in chunks.items():
        out.setdefault(c["source"], set()).add(cid)
    return out


def test_ingest_is_idempotent_and_incremental(
    brics_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = brics_project / "experiments" / "tiny.yaml"
    corpus = brics_project / "data" / "brics"
    counts, _ = run_ingest(spec, capsys)
    first = stored(spec)
    assert first == expected(spec)
    assert counts["chunks"] == {"added": len(first), "updated": 0, "deleted": 0, "unchanged": 0}

    counts, _ = run_ingest(spec, capsys)
    assert counts["chunks"] == {"added": 0, "updated": 0, "deleted": 0, "unchanged": len(first)}
    assert stored(spec) == first

    # Edit one paragraph in the middle of one file: only that file's chunks may change.
    path = corpus / "03_g7_response.md"
    text = path.read_text()
    para = text.split("\n\n")[3]
    path.write_text(text.replace(para, para + " The G7 also forgot to listen."))
    counts, _ = run_ingest(spec, capsys)
    second = stored(spec)
    assert second == expected(spec)
    old, new = by_source(first), by_source(second)
    assert {f for f in old if old[f] != new.get(f)} == {"03_g7_response.md"}
    changed = new["03_g7_response.md"] - old["03_g7_response.md"]
    removed = old["03_g7_response.md"] - new["03_g7_response.md"]
    assert 1 <= len(changed) < len(new["03_g7_response.md"])  # the other chunks of the file keep their ids
    assert counts["chunks"]["added"] == len(changed) and counts["chunks"]["deleted"] == len(removed)
    assert counts["files"] == {"added": 0, "updated": 1, "deleted": 0, "unchanged": len(new) - 1}

    # Remove a file: its chunks go, nothing else moves.
    gone = old["06_energy_supply_chains.md"]
    (corpus / "06_energy_supply_chains.md").unlink()
    counts, _ = run_ingest(spec, capsys)
    third = stored(spec)
    assert third == expected(spec)
    assert not gone & third.keys() and set(second) - gone == set(third)
    assert counts["chunks"] == {"added": 0, "updated": 0, "deleted": len(gone), "unchanged": len(third)}
    assert counts["files"]["deleted"] == 1


def test_inserting_a_paragraph_updates_positions_without_re_embedding(brics_project: Path) -> None:
    spec = brics_project / "experiments" / "tiny.yaml"
    ingest(load_spec(spec))
    path = brics_project / "data" / "brics" / "01_brics_expansion.md"
    path.write_text(
        "A new opening paragraph that is long enough to be a chunk of its own, " * 12
        + "\n\n"
        + path.read_text()
    )
    report = ingest(load_spec(spec))
    assert report.chunks["added"] >= 1 and report.chunks["updated"] >= 1
    assert report.embedding["misses"] == report.chunks["added"]
    assert stored(spec) == expected(spec)


def test_a_reingest_cuts_and_reads_back_only_the_files_whose_bytes_changed(
    brics_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cutting every unchanged file again, and reading every stored chunk back, were most of a no-change
    re-ingest. The collection keeps each file's sha256 and chunk count: only new, edited or removed files are
    cut and have their chunks fetched (every file, when the stored chunks cannot be trusted to be what
    cutting would give)."""
    import hashlib
    import json

    import runner.retrieval.indexing as indexing

    spec = brics_project / "experiments" / "quickstart.yaml"
    corpus = brics_project / "data" / "brics"
    first = ingest(load_spec(spec))
    cut: list[str] = []
    fetched: list[list[str] | None] = []

    def spy_cut(f: Any, *args: Any, **kw: Any) -> Any:
        cut.append(f.rel)
        return chunk_file(f, *args, **kw)

    real_stored = Store.stored

    def spy_stored(self: Store, col: Any, sources: list[str] | None = None) -> Any:
        fetched.append(sources)
        return real_stored(self, col, sources)

    monkeypatch.setattr(indexing, "chunk_file", spy_cut)
    monkeypatch.setattr(Store, "stored", spy_stored)
    files = sorted(p.name for p in corpus.glob("*.md"))
    chunks_per_file = {name: 0 for name in files}
    for c in stored(spec).values():
        chunks_per_file[c["source"]] += 1
    manifest = json.loads(Store(load_spec(spec)).metadata()["pov.files"])
    assert {name: entry[:2] for name, entry in manifest.items()} == {
        name: [hashlib.sha256((corpus / name).read_bytes()).hexdigest(), chunks_per_file[name]]
        for name in files
    }

    report = ingest(load_spec(spec))
    assert cut == [] and fetched == []  # nor is Chroma opened: its metadata, read without it, says so
    assert report.chunks == {"added": 0, "updated": 0, "deleted": 0, "unchanged": len(stored(spec))}
    assert report.files["unchanged"] == len([f for f, n in chunks_per_file.items() if n])
    assert sorted(report.no_chunks) == sorted(f for f, n in chunks_per_file.items() if n == 0)
    assert stored(spec) == expected(spec)
    # What cutting reported is kept per file, so the ingest that cut nothing reports the whole corpus.
    assert first.dropped and sum(first.dropped.values()) == len(first.dropped_items)
    assert (report.dropped, report.truncated, report.window) == (first.dropped, first.truncated, first.window)
    assert report.dropped_items == []

    fetched.clear()
    path = corpus / "04_japan_alliances_trade.md"
    path.write_text(path.read_text().replace("Japan", "Nippon", 1))
    (corpus / "06_energy_supply_chains.md").unlink()
    report = ingest(load_spec(spec))
    assert cut == ["04_japan_alliances_trade.md"]
    assert fetched == [["04_japan_alliances_trade.md", "06_energy_supply_chains.md"]]
    with_chunks = len([f for f, n in chunks_per_file.items() if n])
    assert report.files == {"added": 0, "updated": 1, "deleted": 1, "unchanged": with_chunks - 2}
    assert stored(spec) == expected(spec)

    # Chunks cut by another chunker, or a collection left mid-write: every file is cut again.
    for meta in ({"pov.chunker": "another-chunker"}, {"pov.state": "writing"}):
        col = Store(load_spec(spec)).collection()
        col.modify(metadata={**col.metadata, **meta})
        cut.clear()
        fetched.clear()
        ingest(load_spec(spec))
        assert sorted(cut) == sorted(set(files) - {"06_energy_supply_chains.md"}) and fetched == [None]
        assert stored(spec) == expected(spec)


def test_a_metadata_key_no_longer_written_does_not_rewrite_its_chunk_at_every_ingest(
    brics_project: Path,
) -> None:
    """Chroma's update merges metadata, so a key an older version stored can never be removed: comparing
    whole dicts called such a chunk changed, and rewrote it, at every ingest."""
    spec = brics_project / "experiments" / "quickstart.yaml"
    ingest(load_spec(spec))
    col = Store(load_spec(spec)).collection()
    some = col.get(limit=1)["ids"][0]
    col.update(ids=[some], metadatas=[{"legacy_key": "from an older version"}])
    col.modify(metadata={**col.metadata, "pov.state": "writing"})  # so every chunk is compared
    assert ingest(load_spec(spec)).chunks["updated"] == 0


def test_collection_records_embedder_dimension_and_cosine_space(brics_project: Path) -> None:
    spec = brics_project / "experiments" / "tiny.yaml"
    ingest(load_spec(spec))
    col = Store(load_spec(spec)).collection()
    assert col.configuration["hnsw"]["space"] == "cosine"
    meta = col.metadata
    assert (meta["pov.provider"], meta["pov.model"], meta["pov.dim"]) == (
        "sentence-transformers",
        "all-MiniLM-L6-v2",
        384,
    )
    assert meta["pov.state"] == "complete"
    assert (brics_project / ".pov" / "chroma").is_dir()


def test_another_embedder_is_a_clear_error_until_rebuild(
    brics_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.retrieval import ChromaRetriever
    from runner.retrieval.embedders.sentence_transformers import resolve_model

    spec = brics_project / "experiments" / "tiny.yaml"
    other = tmp_path / "other-minilm"
    other.symlink_to(resolve_model("all-MiniLM-L6-v2"))
    run_ingest(spec, capsys)
    override = f"embedder.model={other}"
    assert main(["ingest", str(spec), "--set", override]) == 2
    err = capsys.readouterr().err
    assert "all-MiniLM-L6-v2" in err and str(other) in err and "--rebuild" in err
    with pytest.raises(UserError, match="holds embeddings of sentence-transformers/all-MiniLM-L6-v2"):
        ChromaRetriever(load_spec(spec, [override])).retrieve([("japan-alliances", "security", (15, 10, 5))])
    counts, _ = run_ingest(spec, capsys, "--set", override, "--rebuild")
    assert counts["chunks"]["added"] == len(expected(spec))
    assert Store(load_spec(spec)).metadata()["pov.model"] == str(other)


def test_a_crash_mid_write_is_repaired_by_the_next_ingest(
    brics_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chromadb.api.models.Collection import Collection

    from runner.retrieval import ChromaRetriever

    spec = brics_project / "experiments" / "tiny.yaml"
    ingest(load_spec(spec))
    path = brics_project / "data" / "brics" / "02_dedollarisation.md"
    path.write_text(path.read_text().replace("dollar", "greenback"))

    def crash(self: Any, *a: Any, **k: Any) -> None:
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(Collection, "delete", crash)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        ingest(load_spec(spec))
    monkeypatch.undo()
    half = stored(spec)
    assert half != expected(spec)  # new chunks in, old ones not yet out
    assert Store(load_spec(spec)).metadata()["pov.state"] == "writing"
    r = ChromaRetriever(load_spec(spec))
    r.retrieve([("local-currency-settlement", "markets", (5, 3, 2))])
    assert any("did not finish" in w for w in r.warnings)

    report = ingest(load_spec(spec))
    assert report.chunks["added"] == 0 and report.chunks["deleted"] >= 1
    assert stored(spec) == expected(spec)
    assert Store(load_spec(spec)).metadata()["pov.state"] == "complete"


def test_writes_respect_chromas_max_batch_size(brics_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chromadb.api.client import Client
    from chromadb.api.models.Collection import Collection

    sizes: dict[str, list[int]] = {"upsert": [], "delete": []}
    for name in sizes:
        original = getattr(Collection, name)

        def wrapper(self: Any, *a: Any, _orig: Any = original, _name: str = name, **k: Any) -> Any:
            sizes[_name].append(len(k["ids"]))
            return _orig(self, *a, **k)

        monkeypatch.setattr(Collection, name, wrapper)
    monkeypatch.setattr(Client, "get_max_batch_size", lambda self: 7)
    spec = brics_project / "experiments" / "tiny.yaml"
    ingest(load_spec(spec))
    assert (
        sum(sizes["upsert"]) == len(expected(spec)) and max(sizes["upsert"]) <= 7 and len(sizes["upsert"]) > 1
    )
    doomed = ("01_brics_expansion.md", "02_dedollarisation.md")
    n_doomed = sum(c["source"] in doomed for c in stored(spec).values())
    for f in doomed:
        (brics_project / "data" / "brics" / f).unlink()
    ingest(load_spec(spec))
    assert sum(sizes["delete"]) == n_doomed > 7 and max(sizes["delete"]) <= 7
    assert stored(spec) == expected(spec)


def bad_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "good.md").write_text(
        "The dollar remains the anchor of world trade, and that will not change soon. " * 5
    )
    (corpus / "also_good.txt").write_text(
        "BRICS enlargement changed how the group is seen by outsiders. " * 5
    )
    (corpus / "empty.md").write_text("\n\n   \n")
    (corpus / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (corpus / "legacy.txt").write_bytes("Les \u00e9changes en monnaie locale progressent.\n".encode("cp1252"))
    spec = root / "spec.yaml"
    spec.write_text(f"""name: bad-corpus
corpus: {{path: {corpus}, collection: bad-corpus}}
questions: [{{id: q1, text: "Will the dollar stay dominant?"}}]
pov_sets: {{p: [Markets decide.]}}
personas: {{a: You are an analyst.}}
templates: {{t: {Path(__file__).resolve().parent.parent / "templates" / "opinion_only.j2"}}}
models: {{m: {{name: "builtin:tiny-llama"}}}}
""")
    return spec


def test_bad_files_are_named_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = bad_corpus(tmp_path)
    counts, err = run_ingest(spec, capsys)
    assert "skipped empty.md: empty file" in err
    assert "skipped image.md: binary file" in err
    assert re.search(r"skipped legacy\.txt: not UTF-8 \(byte 0xe9 on line 1\)", err)
    assert {c["source"] for c in stored(spec).values()} == {"good.md", "also_good.txt"}
    assert counts["files"]["added"] == 2

    # A good file that turns bad loses its chunks (with the warning), rather than keeping stale ones.
    (tmp_path / "corpus" / "good.md").write_bytes(b"\xff\xfe\x00b\x00a\x00d")
    counts, err = run_ingest(spec, capsys)
    assert "skipped good.md: binary file" in err
    assert {c["source"] for c in stored(spec).values()} == {"also_good.txt"}
    assert counts["files"]["deleted"] == 1


def test_strict_refuses_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = bad_corpus(tmp_path)
    assert main(["ingest", str(spec), "--strict"]) == 2
    err = capsys.readouterr().err
    for name in ("empty.md", "image.md", "legacy.txt"):
        assert name in err
    assert Store(load_spec(spec)).collection() is None


def test_a_corpus_with_nothing_to_ingest_is_a_user_error(tmp_path: Path) -> None:
    spec = bad_corpus(tmp_path)
    for f in ("good.md", "also_good.txt"):
        (tmp_path / "corpus" / f).unlink()
    with pytest.raises(UserError, match=r"no ingestible files.*empty\.md"):
        ingest(load_spec(spec))


def test_a_collection_made_by_another_corpus_is_refused_before_any_write(
    brics_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two specs naming one corpus.collection used to delete each other's chunks on every ingest."""
    experiments = brics_project / "experiments"
    other = brics_project / "data" / "other"
    other.mkdir()
    (other / "notes.md").write_text(
        "A paragraph about something else entirely, long enough to be a chunk. " * 4
    )
    (experiments / "other.yaml").write_text(
        "name: other\nextends: base.yaml\ncorpus: {path: ../data/other, collection: brics-minilm}\n"
    )
    (experiments / "rechunked.yaml").write_text(
        "name: rechunked\nextends: base.yaml\ncorpus: {chunking: {max_words: 120}}\n"
    )
    base = experiments / "base.yaml"
    run_ingest(base, capsys)
    before = stored(base)

    for spec in ("other.yaml", "rechunked.yaml"):
        assert main(["ingest", str(experiments / spec)]) == 2
        err = capsys.readouterr().err
        assert "collection 'brics-minilm'" in err and "made by spec 'base'" in err, err
        assert "give this spec its own corpus.collection" in err and "--rebuild" in err
        assert "Traceback" not in err
        assert stored(base) == before
    assert Store(load_spec(base)).metadata()["pov.spec"] == "base"

    # Another spec over the same corpus shares the collection, and an edited file still re-ingests.
    counts, _ = run_ingest(experiments / "tiny.yaml", capsys)
    assert counts["chunks"]["added"] == 0
    path = brics_project / "data" / "brics" / "03_g7_response.md"
    path.write_text(
        path.read_text() + "\n\nA closing paragraph that the G7 added much later than the rest.\n"
    )
    counts, _ = run_ingest(base, capsys)
    assert counts["chunks"]["added"] >= 1 and stored(base) == expected(base)
    # The spec that made the collection may change its own chunking (it re-ingests, as before).
    counts, _ = run_ingest(base, capsys, "--set", "corpus.chunking.max_words=120")
    assert counts["chunks"]["deleted"] >= 1


def test_a_collection_without_a_recorded_spec_is_adopted(brics_project: Path) -> None:
    """Collections made before the spec was recorded carry no `pov.spec`: ingest takes them over."""
    base = load_spec(brics_project / "experiments" / "base.yaml")
    ingest(base)
    col = Store(base).collection()
    assert col is not None
    legacy = {
        k: v
        for k, v in (col.metadata or {}).items()
        if k not in ("pov.spec", "pov.spec_path", "pov.corpus", "pov.include")
    }
    col.modify(metadata=legacy)
    assert "pov.spec" not in Store(base).metadata()
    rechunked = load_spec(brics_project / "experiments" / "tiny.yaml", ["corpus.chunking.max_words=120"])
    assert ingest(rechunked).chunks["deleted"] >= 1
    assert Store(base).metadata()["pov.spec"] == "tiny"
