"""Three-stage retrieval over the real store with the real MiniLM: the algorithm, batching, caching, output."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_scoring import reference_cosine, reference_pov

from runner.cli import main
from runner.errors import UserError
from runner.retrieval import ChromaRetriever, RetrievalResult, Stage, Store, ingest
from runner.spec import load_spec

CACHE_LINE = re.compile(r"embedding cache: (\d+) hits, (\d+) misses, (\d+) provider calls")


def cache_counts(text: str) -> tuple[int, int, int]:
    m = CACHE_LINE.search(text)
    assert m, text
    return int(m[1]), int(m[2]), int(m[3])


def sources(spec: Path, *overrides: str) -> dict[str, str]:
    col = Store(load_spec(spec, overrides)).collection()
    got = col.get(include=["metadatas"])
    return {i: m["source"] for i, m in zip(got["ids"], got["metadatas"], strict=True)}


def all_keys(exp: Any, k: tuple[int, int, int] = (15, 10, 5)) -> list[tuple[str, str, tuple[int, int, int]]]:
    return [(q, p, k) for q in exp.questions for p in exp.pov_sets]


def test_quickstart_twice_second_run_embeds_nothing(
    brics_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = brics_project / "experiments" / "tiny.yaml"
    assert main(["ingest", str(spec)]) == 0
    capsys.readouterr()
    assert main(["retrieve", str(spec)]) == 0
    out1 = capsys.readouterr().out
    hits1, misses1, calls1 = cache_counts(out1)
    exp = load_spec(spec)
    m = exp.spec.matrix
    statements = {s for p in m.pov_set for s in exp.pov_sets[p]}  # type: ignore[union-attr]
    # Questions and POV statements, each once; chunks come from the store, never re-embedded.
    assert (hits1, misses1) == (0, len(m.question) + len(statements)) and calls1 >= 1
    assert main(["retrieve", str(spec), "--json"]) == 0
    out2, err2 = capsys.readouterr()
    assert cache_counts(err2) == (misses1, 0, 0)
    keys = {(q, p) for q in m.question for p in m.pov_set}  # type: ignore[union-attr]
    assert {(r["question"], r["pov_set"]) for r in map(json.loads, out2.splitlines())} == keys


def test_no_boilerplate_chunk_reaches_stage_3(brics_project: Path) -> None:
    spec = brics_project / "experiments" / "base.yaml"
    exp = load_spec(spec)
    ingest(exp)
    src = sources(spec)
    results = ChromaRetriever(exp).retrieve(all_keys(exp))
    assert len(results) == len(exp.questions) * len(exp.pov_sets) == 30
    leaked = {
        (q, p): [src[i] for i in r.stages[2].ids if src[i].startswith("zz_boilerplate_")]
        for (q, p, _), r in results.items()
    }
    assert not {k: v for k, v in leaked.items() if v}
    assert all(len(r.stages[2].ids) == 5 for r in results.values())


def test_without_the_boilerplate_filter_a_reference_list_gets_through(brics_project: Path) -> None:
    """Why the filter exists: the notebook's algorithm alone lets page furniture into the final five."""
    spec = brics_project / "experiments" / "base.yaml"
    overrides = ["corpus.chunking.drop_boilerplate=false", "corpus.collection=brics-raw"]
    exp = load_spec(spec, overrides)
    ingest(exp)
    src = sources(spec, *overrides)
    results = ChromaRetriever(exp).retrieve(all_keys(exp))
    leaked = [
        k for k, r in results.items() if any(src[i].startswith("zz_boilerplate_") for i in r.stages[2].ids)
    ]
    assert leaked


def test_stages_follow_the_algorithm(brics_project: Path, minilm: Any) -> None:
    spec = brics_project / "experiments" / "base.yaml"
    exp = load_spec(spec)
    ingest(exp)
    col = Store(exp).collection()
    everything = col.get(include=["documents"])
    all_texts = dict(zip(everything["ids"], everything["documents"], strict=True))
    keys = [("japan-alliances", "security", (15, 10, 5)), ("sanctions-and-dollar", "markets", (12, 6, 4))]
    results = ChromaRetriever(exp).retrieve(keys)
    for q, p, (k1, k2, k3) in keys:
        r = results[(q, p, (k1, k2, k3))]
        s1, s2, s3 = r.stages
        assert [s.name for s in r.stages] == ["vector", "query", "pov"]
        assert (len(s1.ids), len(s2.ids), len(s3.ids)) == (k1, k2, k3)
        assert all(t == all_texts[i] for s in r.stages for i, t in zip(s.ids, s.texts, strict=True))
        qv = minilm.embed([exp.questions[q].text], "query")[0]
        ids = list(all_texts)
        brute = reference_cosine(qv, minilm.embed([all_texts[i] for i in ids], "document"))
        order = sorted(range(len(ids)), key=lambda j: -brute[j])[:k1]
        assert s1.ids == [ids[j] for j in order]  # exact nearest neighbours, best first
        np.testing.assert_allclose(s1.scores, brute[order], atol=1e-4)
        # Same reranker as embedder: stage 2 is the stage-1 ranking, cut to k2.
        assert s2.ids == s1.ids[:k2]
        np.testing.assert_allclose(s2.scores, s1.scores[:k2], atol=1e-4)
        pov = minilm.embed(exp.pov_sets[p], "query")
        expected = reference_pov(minilm.embed(s2.texts, "document"), pov)
        assert s3.ids == [s2.ids[j] for j in np.argsort(-expected, kind="stable")[:k3]]
        np.testing.assert_allclose(s3.scores, sorted(expected, reverse=True)[:k3], atol=1e-4)
        # Each kept chunk's cosines to the statements, in the spec's order; the POV score is their norm.
        assert s3.statements == exp.pov_sets[p] and len(s3.similarities) == k3
        chunk_vecs = minilm.embed(s3.texts, "document")
        for vec, sims, score in zip(chunk_vecs, s3.similarities, s3.scores, strict=True):
            np.testing.assert_allclose(sims, [reference_cosine(v, vec[None])[0] for v in pov], atol=1e-4)
            assert float(np.linalg.norm(sims)) == pytest.approx(score, abs=1e-4)
        assert r.final_chunks()[0] == {"id": s3.ids[0], "text": s3.texts[0], "score": s3.scores[0], "rank": 1}


def test_separate_reranker_embeds_each_text_once_and_agrees(brics_project: Path, tmp_path: Path) -> None:
    from runner.retrieval.embedders.sentence_transformers import resolve_model

    spec = brics_project / "experiments" / "tiny.yaml"
    twin = tmp_path / "minilm-twin"  # the same weights under another name: a different reranker to the runner
    twin.symlink_to(resolve_model("all-MiniLM-L6-v2"))
    exp = load_spec(spec)
    exp2 = load_spec(spec, [f"reranker={{provider: sentence-transformers, model: {twin}}}"])
    ingest(exp)
    questions = ["japan-alliances", "brics-growth-drivers", "local-currency-settlement"]
    keys = [(q, p, k) for q in questions for p in ("security", "markets") for k in ((15, 10, 5), (8, 8, 2))]
    same = ChromaRetriever(exp).retrieve(keys)
    r2 = ChromaRetriever(exp2)
    other = r2.retrieve(keys)
    assert not r2.reuse_stored
    stage1_docs = {i for r in other.values() for i in r.stages[0].ids}
    # The sets asked for, and those of the matrix (global_south, security), whose final chunks the stance
    # metric compares with.
    statements = {s for p in ("security", "markets", "global_south") for s in exp.pov_sets[p]}
    rerank = r2.cache_stats()["by_role"]["reranker"]
    assert rerank["misses"] == len(questions) + len(stage1_docs) + len(statements) and rerank["hits"] == 0
    # The store's embedder found the questions in the disk cache, where the first retriever put them.
    assert r2.cache_stats()["by_role"]["embedder"] == {
        "hits": len(questions),
        "misses": 0,
        "provider_calls": 0,
    }
    for key in keys:
        for a, b in zip(same[key].stages, other[key].stages, strict=True):
            assert a.ids == b.ids
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    r2.retrieve(keys)  # again in the same process: nothing new to embed
    assert r2.cache_stats()["by_role"]["reranker"]["misses"] == rerank["misses"]


def test_ties_break_by_id_then_keep_order(brics_project: Path) -> None:
    corpus = brics_project / "data" / "brics"
    shutil.copy(corpus / "04_japan_alliances_trade.md", corpus / "04b_japan_copy.md")
    spec = brics_project / "experiments" / "tiny.yaml"
    exp = load_spec(spec)
    ingest(exp)
    key = ("japan-alliances", "security", (15, 10, 6))
    first = ChromaRetriever(exp).retrieve([key])[key]
    again = ChromaRetriever(exp).retrieve([key])[key]
    assert first.to_dict() == again.to_dict()
    for stage in first.stages:
        twins = [i for i, t in enumerate(stage.texts) if stage.texts.count(t) == 2]
        assert twins, stage.name  # identical chunks from the two files tie on every score
        for a, b in itertools.pairwise(twins):
            if stage.texts[a] == stage.texts[b]:
                assert stage.scores[a] == pytest.approx(stage.scores[b], abs=1e-6)
        pairs = {}
        for i in twins:
            pairs.setdefault(stage.texts[i], []).append(stage.ids[i])
        for ids in pairs.values():
            prev = [i for i in first.stages[0].ids if i in ids]
            assert ids == prev  # each stage keeps stage 1's order for the twins
            assert first.stages[0].ids.index(ids[0]) + 1 == first.stages[0].ids.index(ids[1])
            assert ids == sorted(ids)  # and stage 1 orders equal scores by id


def test_result_round_trips_through_json() -> None:
    r = RetrievalResult(
        "q",
        "p",
        (3, 2, 1),
        [
            Stage("vector", ["a", "b", "c"], ["A", "B", "C"], [0.9, 0.8, 0.7]),
            Stage("query", ["b", "a"], ["B", "A"], [0.5, 0.4]),
            Stage("pov", ["a"], ["A"], [1.2], ["s1", "s2"], [[0.9, 0.75]]),
        ],
    )
    d = json.loads(json.dumps(r.to_dict()))
    assert RetrievalResult.from_dict(d) == r
    assert r.final_chunks() == [{"id": "a", "text": "A", "score": 1.2, "rank": 1}]


def test_errors_and_staleness(brics_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = brics_project / "experiments" / "tiny.yaml"
    exp = load_spec(spec)
    with pytest.raises(UserError, match=r"run `pov ingest .*tiny.yaml` first"):
        ChromaRetriever(exp).retrieve([("japan-alliances", "security", (15, 10, 5))])
    ingest(exp)
    with pytest.raises(UserError, match="unknown question 'nope'"):
        ChromaRetriever(exp).retrieve([("nope", "security", (15, 10, 5))])
    with pytest.raises(UserError, match="unknown POV set"):
        ChromaRetriever(exp).retrieve([("japan-alliances", "nope", (15, 10, 5))])
    with pytest.raises(SystemExit) as bad_k:
        main(["retrieve", str(spec), "--k", "5,10,3"])
    assert bad_k.value.code == 2
    assert "K1 >= K2 >= K3" in capsys.readouterr().err
    assert main(["retrieve", str(spec), "--question", "nope"]) == 2
    assert "no such question" in capsys.readouterr().err

    path = brics_project / "data" / "brics" / "05_global_south_institutions.md"
    path.write_text(path.read_text() + "\n\nOne more paragraph about reform of the Bretton Woods twins.\n")
    assert main(["retrieve", str(spec), "--question", "g7-response", "--pov-set", "security"]) == 0
    _, err = capsys.readouterr()
    assert "changed since the last ingest" in err and "pov ingest" in err


def test_cli_table_shows_every_stage(brics_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = brics_project / "experiments" / "tiny.yaml"
    exp = load_spec(spec)
    ingest(exp)
    key = ("g7-response", "global_south", (6, 4, 2))
    want = ChromaRetriever(exp).retrieve([key])[key]
    assert (
        main(
            ["retrieve", str(spec), "--question", "g7-response", "--pov-set", "global_south", "--k", "6,4,2"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "g7-response · global_south · k=6-4-2" in out
    rows = [line for line in out.splitlines() if any(i[:8] in line for i in want.stages[0].ids)]
    assert len(rows) == 6
    for rank, cid in enumerate(want.stages[2].ids, 1):  # stage-3 chunks come first, in order
        assert cid[:8] in rows[rank - 1] and f"{rank} {want.stages[2].scores[rank - 1]:.3f}" in rows[rank - 1]
    assert CACHE_LINE.search(out)


def test_importing_retrieval_loads_no_heavy_module() -> None:
    code = (
        "import sys, runner.retrieval.retriever, runner.retrieval.store, runner.retrieval.scoring, runner.retrieval.embedders.base, "
        "runner.commands.ingest, runner.commands.retrieve; "
        "print([m for m in ('torch', 'chromadb', 'sentence_transformers', 'transformers', 'cohere') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
