"""Stage 3 by scoring method and stage 2 by a rerank model, over the real store with the real MiniLM: what each
method does on the sample corpus, the per-key retrieval metrics, a local cross-encoder and Cohere rerank
through the real SDK against the stand-in."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cohere_standin import StandIn, fake_relevance, serve
from conftest import copy_brics_project

from runner.retrieval import ChromaRetriever, RetrievalResult, ingest
from runner.spec import load_spec

K = (15, 10, 5)
METHODS = [
    "pov_scores={l2: l2, blend: blend, contrast: contrast}",
    "matrix.pov_set=all",
    "matrix.question=all",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_brics_project(tmp_path_factory.mktemp("methods") / "proj")
    ingest(load_spec(root / "experiments" / "quickstart.yaml"))
    return root


@pytest.fixture(scope="module")
def by_method(project: Path) -> dict[tuple[str, str, str], RetrievalResult]:
    exp = load_spec(project / "experiments" / "quickstart.yaml", METHODS)
    keys = [(q, p, K, s) for q in exp.questions for p in exp.pov_sets for s in ("l2", "blend", "contrast")]
    return {(q, p, s): r for (q, p, _, s), r in ChromaRetriever(exp).retrieve(keys).items()}


def _mean(results: dict[tuple[str, str, str], RetrievalResult], method: str, metric: str) -> float:
    return statistics.fmean(r.metrics[metric] for (_, _, s), r in results.items() if s == method)


def test_l2_is_unchanged_by_the_choice(project: Path, by_method: dict[tuple[str, str, str], Any]) -> None:
    exp = load_spec(project / "experiments" / "quickstart.yaml")  # declares no method: l2, as before
    keys = [(q, p, K) for q in exp.questions for p in exp.pov_sets]
    plain = ChromaRetriever(exp).retrieve(keys)
    for q, p, k in keys:
        assert [s.ids for s in plain[(q, p, k)].stages] == [s.ids for s in by_method[(q, p, "l2")].stages]
        assert plain[(q, p, k)].stages[2].scores == by_method[(q, p, "l2")].stages[2].scores


def test_contrast_separates_the_sets_and_blend_keeps_the_question(
    by_method: dict[tuple[str, str, str], RetrievalResult],
) -> None:
    # The finding on the sample: l2 keeps about half of the question's top 5, and the three POV sets
    # share about half their final chunks.
    assert (
        _mean(by_method, "contrast", "stance_specificity")
        > _mean(by_method, "l2", "stance_specificity") + 0.2
    )
    assert _mean(by_method, "blend", "relevance_kept") > _mean(by_method, "l2", "relevance_kept") + 0.15
    assert _mean(by_method, "blend", "best_match_rank") < _mean(by_method, "l2", "best_match_rank")


def test_metrics_say_what_the_stages_did(by_method: dict[tuple[str, str, str], RetrievalResult]) -> None:
    sets = ("global_south", "security", "markets")
    for (q, p, s), r in by_method.items():
        s2, s3 = r.stages[1], r.stages[2]
        assert r.pov_score == s and r.to_dict()["metrics"] == r.metrics
        assert r.metrics["relevance_kept"] == len(set(s3.ids) & set(s2.ids[:5])) / 5
        rank = r.metrics["best_match_rank"]
        assert (rank <= 5) == (s2.ids[0] in s3.ids) and (rank > 5 or s3.ids[int(rank) - 1] == s2.ids[0])
        others = [set(by_method[(q, o, s)].stages[2].ids) for o in sets if o != p]
        overlap = statistics.fmean(len(set(s3.ids) & o) / len(set(s3.ids) | o) for o in others)
        assert r.metrics["stance_specificity"] == pytest.approx(1 - overlap)
        assert {f"stage{n}_boilerplate_share" for n in (1, 2, 3)} <= set(r.metrics)
        assert r.metrics["stage1_truncated"] == 0  # 180-word chunks fit MiniLM's 256 tokens
    restored = RetrievalResult.from_dict(by_method[("japan-alliances", "security", "contrast")].to_dict())
    assert restored.pov_score == "contrast" and restored.metrics


def test_boilerplate_and_long_chunks_are_counted_per_stage(tmp_path: Path) -> None:
    root = copy_brics_project(tmp_path / "proj")
    for f in (
        "01_brics_expansion",
        "03_g7_response",
        "04_japan_alliances_trade",
        "05_global_south_institutions",
    ):
        (
            root / "data" / "brics" / f"{f}.md"
        ).unlink()  # fewer chunks to embed: two articles and the furniture
    overrides = [
        "corpus.chunking={max_words: 320, overlap_words: 30, drop_boilerplate: false}",
        "corpus.collection=brics-raw",
    ]
    exp = load_spec(root / "experiments" / "quickstart.yaml", overrides)
    ingest(exp)
    keys = [(q, p, (30, 10, 3)) for q in exp.questions for p in ("security", "markets")]
    results = ChromaRetriever(exp).retrieve(keys).values()
    assert max(r.metrics["stage1_boilerplate_share"] for r in results) > 0
    assert max(r.metrics["stage1_truncated"] for r in results) > 0
    for r in results:
        assert r.metrics["stage1_truncated"] >= r.metrics["stage3_truncated"]


def test_cross_encoder_reorders_stage_two(project: Path, tiny_cross_encoder: Path) -> None:
    from sentence_transformers import CrossEncoder

    spec = project / "experiments" / "quickstart.yaml"
    exp = load_spec(
        spec, [f"query_reranker={{provider: cross-encoder, model: {tiny_cross_encoder}, device: cpu}}"]
    )
    keys = [(q, "security", (12, 8, 4)) for q in ("japan-alliances", "brics-growth-drivers")]
    retriever = ChromaRetriever(exp)
    results = retriever.retrieve(keys)
    model = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    for q, _, _ in keys:
        s1, s2, _ = results[(q, "security", (12, 8, 4))].stages
        want = model.predict([(exp.questions[q].text, t) for t in s1.texts])
        order = np.argsort(-want, kind="stable")[:8]
        assert s2.ids == [s1.ids[i] for i in order]
        np.testing.assert_allclose(s2.scores, want[order], rtol=1e-5)
        assert s2.ids != s1.ids[:8]  # the order changed, not only the length
    assert retriever.cache_stats()["by_role"]["query_reranker"]["misses"] == 24
    again = ChromaRetriever(exp)
    assert again.retrieve(keys)[keys[0]].stages[1].ids == results[keys[0]].stages[1].ids
    assert again.cache_stats()["by_role"]["query_reranker"] == {"hits": 24, "misses": 0, "provider_calls": 0}


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    monkeypatch.setenv("CO_API_KEY", "co-test-rerank-key")
    with serve() as state:
        monkeypatch.setenv("CO_API_URL", state.url)
        yield state


def test_cohere_rerank_through_the_sdk(project: Path, standin: StandIn) -> None:
    exp = load_spec(
        project / "experiments" / "quickstart.yaml", ["query_reranker={provider: cohere, model: rerank-v3.5}"]
    )
    key = ("local-currency-settlement", "markets", (15, 10, 5))
    r = ChromaRetriever(exp).retrieve([key])[key]
    s1, s2, _ = r.stages
    question = exp.questions[key[0]].text
    relevance = [fake_relevance(question, t) for t in s1.texts]
    order = sorted(range(len(s1.ids)), key=lambda i: -relevance[i])[:10]  # stable: ties keep stage 1's order
    assert s2.ids == [s1.ids[i] for i in order] and s2.scores == [relevance[i] for i in order]
    assert s2.ids != s1.ids[:10]
    reranks = [x for x in standin.requests if x["_path"] == "/v2/rerank"]
    assert len(reranks) == 1 and reranks[0]["model"] == "rerank-v3.5" and reranks[0]["query"] == question
    assert reranks[0]["documents"] == s1.texts and reranks[0]["top_n"] == 15
    assert os.environ["CO_API_KEY"] not in str(r.to_dict())


def test_pov_retrieve_says_what_each_key_did_and_compares_sets(
    project: Path,
    by_method: dict[tuple[str, str, str], RetrievalResult],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner.cli import main

    monkeypatch.setenv("COLUMNS", "240")
    spec = str(project / "experiments" / "quickstart.yaml")
    args = [
        "retrieve",
        spec,
        "--question",
        "japan-alliances",
        "--k",
        "15,10,5",
        *(f"--set={o}" for o in METHODS),
    ]
    assert main([*args, "--pov-set", "security", "--pov-score", "contrast"]) == 0
    out = capsys.readouterr().out
    r = by_method[("japan-alliances", "security", "contrast")]
    assert f"relevance kept {100 * r.metrics['relevance_kept']:.0f}%" in out
    assert f"stance specificity {r.metrics['stance_specificity']:.2f}" in out
    assert main([*args, "--compare-pov", "--pov-score", "l2", "--width", "30"]) == 0
    out = capsys.readouterr().out
    assert "japan-alliances · k=15-10-5 · l2: final chunks by POV set" in out
    sets = ("global_south", "security", "markets")
    finals = {p: by_method[("japan-alliances", p, "l2")].stages[2].ids for p in sets}
    for p in sets:
        elsewhere = {i for o in sets if o != p for i in finals[o]}
        for cid in finals[p]:
            assert f"{'*' if cid in elsewhere else ' '}{cid[:8]}" in out
    assert main([*args, "--pov-score", "nope"]) == 2
    assert "no such method" in capsys.readouterr().err
