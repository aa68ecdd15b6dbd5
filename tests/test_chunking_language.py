"""Chunking by language: English exactly as on main (ids pinned from it), Japanese in Sudachi morphemes cut at
sentence ends, bilingual documents with each paragraph beside its rendering, Chinese in characters, and the
boilerplate rules on Japanese page furniture."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.retrieval.chunking import chunk_file, chunk_text, is_boilerplate_chunk, split_paragraphs
from runner.retrieval.language import detect, sentences
from runner.retrieval.segmenter import segmenter
from runner.retrieval.store import chunking_key
from runner.spec import SourceFile, expand, load_spec, read_corpus

REPO = Path(__file__).resolve().parent.parent
BILINGUAL = REPO / "data" / "bilingual"
PINNED = json.loads((REPO / "tests" / "fixtures" / "english_chunk_ids.json").read_text())
SETTING = re.compile(r"^(\S+) max_words=(\d+) overlap_words=(\d+) drop_boilerplate=(True|False)$")


def _src(rel: str, text: str) -> SourceFile:
    return SourceFile(Path(rel), rel, "sha", text)


def raw_sudachi_count(text: str) -> int:
    """Morphemes as Sudachi itself cuts them (whitespace aside): the test's own measure of a chunk's size."""
    import sudachipy

    tok = sudachipy.Dictionary().tokenizer(fields={"surface"})
    return sum(1 for m in tok.tokenize(text) if not m.surface().isspace())


def sample_sentences() -> list[str]:
    """The sentences of the Japanese sample documents that hold no digits (Sudachi splits a number into
    digits; the chunker counts it as one token), each ending in 。."""
    text = "".join((BILINGUAL / f).read_text() for f in ("01_nuclear_restart_ja.md", "02_rice_policy_ja.md"))
    found = re.findall(r"[^。\n#]+。", text)
    return [s for s in found if not re.search(r"[0-9〇一二三四五六七八九十百千万]", s)]


@pytest.mark.parametrize("setting", sorted(PINNED["settings"]))
@pytest.mark.parametrize("language", ["auto", "en"])
def test_english_chunk_ids_are_those_main_computed(setting: str, language: str) -> None:
    m = SETTING.match(setting)
    assert m, setting
    folder, max_words, overlap, drop = m[1], int(m[2]), int(m[3]), m[4] == "True"
    corpus = read_corpus(REPO / folder, ["*.md", "*.txt"])
    got = {
        f.rel: [c.id for c in chunk_file(f, max_words, overlap, drop, language=language)]
        for f in corpus.files
    }
    assert got == PINNED["settings"][setting]


def test_existing_collections_see_the_chunking_they_recorded() -> None:
    """`pov.chunking` as main wrote it for the sample specs: a collection made before is neither refused as
    another corpus nor cut again for a changed key."""
    exp = load_spec(REPO / "experiments" / "tiny.yaml")
    assert chunking_key(exp) == '{"drop_boilerplate": true, "max_words": 180, "overlap_words": 30}'
    declared = load_spec(REPO / "experiments" / "tiny.yaml", ["corpus.language=ja"])
    assert json.loads(chunking_key(declared))["language"] == "ja"
    # A declared language or token size changes what is retrieved: new cell ids, as for max_words.
    for override in ("corpus.language=ja", "corpus.chunking.max_tokens=120"):
        changed = load_spec(REPO / "experiments" / "tiny.yaml", [override])
        assert {c.id for c in expand(changed)}.isdisjoint({c.id for c in expand(exp)}), override


def test_documents_are_classified_by_script() -> None:
    corpus = read_corpus(BILINGUAL, ["0*.md"])
    got = {f.rel[:2]: detect(f.text) for f in corpus.files}
    assert got == {"01": "ja", "02": "ja", "03": "ja", "04": "ja", "05": None, "06": None}
    assert detect("Tokyo calls it 安全保障, security, in every speech on defence policy this year.") is None
    assert detect("中国的经济增长放缓，政府正在考虑新的刺激措施。") == "zh"


def test_a_japanese_paragraph_is_cut_at_sentence_ends_within_max_tokens() -> None:
    sents = sample_sentences()
    assert len(sents) >= 12
    text = "".join(sents)  # one paragraph, no spaces anywhere
    assert len(text.split()) == 1
    chunks = chunk_text(text, 180, 30, seg=segmenter("ja"), max_tokens=60, overlap_tokens=15)
    assert len(chunks) >= 4
    for c in chunks:
        assert raw_sudachi_count(c) <= 60, c
        assert c.endswith("。") and c in text
        assert any(c.startswith(s) for s in sents), c  # starts where a sentence starts
    assert all(any(s in c for c in chunks) for s in sents)  # every sentence is kept whole somewhere
    for a, b in itertools.pairwise(chunks):
        last = sentences(a)[-1]
        if raw_sudachi_count(last) <= 15:
            assert b.startswith(last)  # the overlap: the last sentence again, where it fits


def test_a_sentence_longer_than_max_tokens_is_cut_into_overlapping_windows() -> None:
    seg = segmenter("ja")
    long_sentence = "、".join(s.rstrip("。") for s in sample_sentences()[:8]) + "。"
    assert raw_sudachi_count(long_sentence) > 150
    chunks = chunk_text(long_sentence, 180, 30, seg=seg, max_tokens=50, overlap_tokens=10)
    assert all(raw_sudachi_count(c) <= 50 for c in chunks)
    for a, b in itertools.pairwise(chunks):
        overlap = next(a[i:] for i in range(len(a)) if b.startswith(a[i:]))
        assert raw_sudachi_count(overlap) == 10
    assert chunks[-1].endswith("。") and chunks[0] == long_sentence[: len(chunks[0])]


def test_a_japanese_document_packs_paragraphs_and_keeps_headings_with_their_text() -> None:
    f = read_corpus(BILINGUAL, ["01_*.md"]).files[0]
    chunks = chunk_file(f, 180, 30, True, max_tokens=200, overlap_tokens=30)
    paragraphs = split_paragraphs(f.text)
    assert chunks[0].text.startswith("# エネルギー安全保障")
    assert all(c.language == "ja" and c.tokens is not None and c.tokens <= 200 for c in chunks)
    # Whole paragraphs only, in order, none lost.
    assert [p for c in chunks for p in split_paragraphs(c.text)] == paragraphs
    assert chunks[0].metadata()["language"] == "ja"


def test_a_bilingual_document_keeps_each_paragraph_with_its_rendering() -> None:
    f = read_corpus(BILINGUAL, ["04_*.md"]).files[0]
    paragraphs = split_paragraphs(f.text)[1:]  # the heading aside: English, Japanese, English, ...
    pairs = list(zip(paragraphs[0::2], paragraphs[1::2], strict=True))
    assert len(pairs) == 3
    chunks = [c.text for c in chunk_file(f, 180, 30, True, max_tokens=200)]
    assert len(chunks) == 3
    for english, japanese in pairs:
        [holder] = [c for c in chunks if english in c]
        assert japanese in holder
    # Too small for a pair: each paragraph alone, cut at sentence ends, within the size (in the chunker's
    # tokens: this text has numbers, which Sudachi alone cuts into digits).
    small = chunk_file(f, 180, 30, True, max_tokens=60, overlap_tokens=10)
    assert all(c.tokens is not None and c.tokens <= 60 for c in small)
    assert {bool(re.search("[ぁ-ん]", c.text)) for c in small} == {True, False}  # English-only chunks too
    assert all(c.text.rstrip()[-1] in ".。" for c in small)


def test_the_declared_language_wins_over_the_script() -> None:
    f = read_corpus(BILINGUAL, ["02_*.md"]).files[0]
    as_words = chunk_file(f, 180, 30, language="en")
    assert all(c.language is None and "language" not in c.metadata() for c in as_words)
    # In words a Japanese paragraph is one word, so the whole document is one chunk.
    assert len(as_words) == 1
    english = read_corpus(BILINGUAL, ["05_*.md"]).files[0]
    as_tokens = chunk_file(english, 180, 30, language="ja", max_tokens=60, overlap_tokens=10)
    assert all(c.language == "ja" and raw_sudachi_count(c.text) <= 60 for c in as_tokens)


def test_chinese_is_chunked_in_characters() -> None:
    para = "中国的经济增长放缓。政府正在考虑新的刺激措施。出口下降，消费疲软。" * 6
    f = _src("zh.md", para)
    chunks = chunk_file(f, 180, 30, max_tokens=40, overlap_tokens=5)
    assert {c.language for c in chunks} == {"zh"}
    assert all(len(c.text) <= 40 and c.text.endswith("。") for c in chunks)
    assert "".join(dict.fromkeys(s for c in chunks for s in sentences(c.text))) == "".join(
        dict.fromkeys(sentences(para))
    )


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=12), min_size=1, max_size=6),
    st.integers(20, 120),
    st.integers(0, 9),
)
def test_japanese_chunks_stay_within_max_tokens_and_lose_no_sentence(
    paragraphs: list[list[int]], max_tokens: int, overlap_tenths: int
) -> None:
    pool = sample_sentences()
    text = "\n\n".join("".join(pool[i % len(pool)] for i in p) for p in paragraphs)
    seg = segmenter("ja")
    chunks = chunk_text(
        text, 180, 30, seg=seg, max_tokens=max_tokens, overlap_tokens=max_tokens * overlap_tenths // 10
    )
    assert all(0 < seg.count(c) <= max_tokens for c in chunks)
    kept = "".join(chunks)
    short = [s for s in sentences(text.replace("\n\n", "")) if seg.count(s) <= max_tokens]
    assert all(s.strip() in kept for s in short)


JAPANESE_FURNITURE = {
    "zz_boilerplate_links_ja.md": ["links", "menu", "site furniture", "chunk under 8 words"],
    "zz_boilerplate_navigation_ja.md": [
        "menu",
        "menu",
        "cookie notice",
        "newsletter",
        "site furniture",
        "menu",
        "footer",
    ],
}


def test_japanese_page_furniture_is_dropped_by_its_rule_and_prose_is_kept() -> None:
    corpus = read_corpus(BILINGUAL, ["*.md"])
    for f in corpus.files:
        lost: list[tuple[str, str]] = []
        chunks = chunk_file(f, 180, 30, True, lost)
        if f.rel.startswith("zz_"):
            assert chunks == []
            assert [r for r, _ in lost] == JAPANESE_FURNITURE[f.rel]
            assert is_boilerplate_chunk(f.text)
        else:
            assert lost == [], f.rel
            assert chunks and not any(is_boilerplate_chunk(c.text) for c in chunks)


def test_segmenter_tokens_rebuild_the_text_and_count_a_number_once() -> None:
    seg = segmenter("ja")
    text = "  二〇二二年十二月、防衛費を2027年度までに２パーセントへ。 Then 2.5 trillion yen."
    toks = seg.tokens(text)
    assert "".join(toks) == text
    assert not any(t.isspace() for t in toks)
    assert {"二〇二二", "2027", "十二"} <= {t.strip() for t in toks}
    assert seg.count(text) == len(toks)
