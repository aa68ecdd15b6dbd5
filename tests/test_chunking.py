"""Chunking: paragraph packing, windows with overlap, content-hash ids, unreadable files, boilerplate."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.retrieval.chunking import (
    MIN_CHUNK_WORDS,
    boilerplate_reason,
    chunk_file,
    chunk_text,
    corpus_fingerprint,
    split_paragraphs,
)
from runner.spec import Skipped, SourceFile, read_corpus, read_source

REPO = Path(__file__).resolve().parent.parent


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_paragraphs_are_packed_whole_up_to_max_words() -> None:
    paras = [words(40, "a"), words(50, "b"), words(30, "c"), words(70, "d")]
    chunks = chunk_text("\n\n".join(paras), max_words=120, overlap_words=10)
    assert chunks == ["\n\n".join(paras[:3]), paras[3]]


def test_long_paragraph_is_cut_into_overlapping_windows() -> None:
    text = words(250)
    chunks = chunk_text(text, max_words=100, overlap_words=20)
    toks = [c.split() for c in chunks]
    assert all(len(t) <= 100 for t in toks)
    for a, b in itertools.pairwise(toks):
        assert a[-20:] == b[:20]
    rebuilt = toks[0] + [w for t in toks[1:] for w in t[20:]]
    assert rebuilt == text.split()


def test_last_window_of_a_long_paragraph_packs_with_the_next() -> None:
    chunks = chunk_text(words(130, "x") + "\n\n" + words(20, "y"), max_words=100, overlap_words=10)
    assert len(chunks) == 2
    assert chunks[1].endswith(words(20, "y"))
    assert chunks[1].split()[:10] == chunks[0].split()[-10:]


def test_heading_moves_to_the_chunk_it_introduces() -> None:
    text = f"{words(60, 'a')}\n\n## Next part\n\n{words(60, 'b')}"
    chunks = chunk_text(text, max_words=80, overlap_words=10)
    assert chunks == [words(60, "a"), "## Next part\n\n" + words(60, "b")]


def test_overlap_must_be_smaller_than_max() -> None:
    with pytest.raises(ValueError):
        chunk_text("a b c", max_words=10, overlap_words=10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=12), st.integers(10, 200), st.integers(0, 9))
def test_chunks_respect_max_words_and_lose_no_word(
    sizes: list[int], max_words: int, overlap_tenths: int
) -> None:
    overlap = max_words * overlap_tenths // 10
    text = "\n\n".join(words(n, f"p{i}_") for i, n in enumerate(sizes))
    chunks = chunk_text(text, max_words, overlap)
    assert all(0 < len(c.split()) <= max_words for c in chunks)
    seen = [w for c in chunks for w in c.split()]
    assert set(seen) == set(text.split())
    # Words appear in order: the first occurrences follow the text.
    firsts = list(dict.fromkeys(seen))
    assert firsts == text.split()


def _src(rel: str, text: str) -> SourceFile:
    return SourceFile(Path(rel), rel, "sha", text)


def test_ids_are_content_hashes_stable_and_local_to_edits() -> None:
    paras = [words(60, "a"), words(60, "b"), words(60, "c")]
    before = chunk_file(_src("f.md", "\n\n".join(paras)), 70, 10)
    again = chunk_file(_src("f.md", "\n\n".join(paras)), 70, 10)
    assert [c.id for c in before] == [c.id for c in again]
    edited = chunk_file(_src("f.md", "\n\n".join([paras[0], paras[1] + " extra", paras[2]])), 70, 10)
    assert before[0].id == edited[0].id and before[2].id == edited[2].id
    assert before[1].id != edited[1].id
    other_file = chunk_file(_src("g.md", "\n\n".join(paras)), 70, 10)
    assert not {c.id for c in other_file} & {c.id for c in before}


def test_identical_chunks_in_one_file_get_distinct_ids() -> None:
    para = words(60)
    chunks = chunk_file(_src("f.md", f"{para}\n\n{para}"), 70, 10)
    assert len(chunks) == 2 and chunks[0].text == chunks[1].text
    assert chunks[0].id != chunks[1].id
    assert [c.position for c in chunks] == [0, 1]


def test_unreadable_files_are_skipped_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("  \n\n ")
    (tmp_path / "blob.md").write_bytes(b"PK\x03\x04\x00\x00binary")
    (tmp_path / "latin1.md").write_bytes("Line one\nCaf\u00e9 au lait\n".encode("latin-1"))
    (tmp_path / "good.md").write_text("Some prose that is fine to read.")
    (tmp_path / "ignored.csv").write_text("a,b")
    (tmp_path / ".hidden.md").write_text("hidden")
    corpus = read_corpus(tmp_path, ["*.md", "*.txt"])
    assert [f.rel for f in corpus.files] == ["good.md"]
    reasons = {s.rel: s.reason for s in corpus.skipped}
    assert set(reasons) == {"empty.md", "blob.md", "latin1.md"}
    assert "empty" in reasons["empty.md"]
    assert "binary" in reasons["blob.md"]
    assert "not UTF-8" in reasons["latin1.md"] and "line 2" in reasons["latin1.md"]
    assert str(Skipped("x.md", "why")) == "x.md: why"


def test_utf8_bom_and_crlf_are_read(tmp_path: Path) -> None:
    (tmp_path / "bom.md").write_bytes("\ufeffFirst para.\r\n\r\nSecond para.".encode())
    got = read_source(tmp_path / "bom.md", "bom.md")
    assert isinstance(got, SourceFile)
    assert split_paragraphs(got.text) == ["First para.", "Second para."]


def test_subfolders_match_by_name_or_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    assert [f.rel for f in read_corpus(tmp_path, ["*.md"]).files] == ["sub/a.md"]
    assert [f.rel for f in read_corpus(tmp_path, ["sub/*"]).files] == ["sub/a.md"]


def test_fingerprint_follows_files_and_chunking(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("alpha")
    fp = corpus_fingerprint(tmp_path, ["*.md"], "c1")
    assert fp == corpus_fingerprint(tmp_path, ["*.md"], "c1")
    assert fp != corpus_fingerprint(tmp_path, ["*.md"], "c2")
    (tmp_path / "a.md").write_text("alpha!")
    fp2 = corpus_fingerprint(tmp_path, ["*.md"], "c1")
    assert fp2 != fp
    (tmp_path / "b.md").write_bytes(b"\xff\xfe")  # unreadable files count too: fixing one is a change
    assert corpus_fingerprint(tmp_path, ["*.md"], "c1") != fp2


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Related: A (https://x.example/a) | B (https://x.example/b) | C (https://x.example/c)", "links"),
        ("Home | About | Topics | Markets | Events | Contact", "menu"),
        ("© 2025 Example Forum. All rights reserved.", "footer"),
        (
            "Castellanos, R. (2023). Clubs and Coalitions. Journal of Things, 18(2), pp. 101-129.",
            "reference entry",
        ),
        ("Topics: Economy, Trade, Security, Energy, Currencies, Development.", "word list"),
    ],
)
def test_boilerplate_paragraphs_are_recognised(text: str, reason: str) -> None:
    assert boilerplate_reason(text) == reason


@pytest.mark.parametrize(
    "text",
    [
        "The G7 was slow to take BRICS seriously, and its early response was to ignore the group.",
        "We use cookies to improve your experience, and you can change that at any time.",
        "Japan sits awkwardly on the fault line of the new world economy; see https://example.org for more.",
        "BRICS grew.",
    ],
)
def test_prose_is_not_boilerplate(text: str) -> None:
    assert boilerplate_reason(text) is None


def test_every_brics_content_paragraph_survives_and_boilerplate_files_shrink() -> None:
    corpus = read_corpus(REPO / "data" / "brics", ["*.md"])
    for f in corpus.files:
        kept = chunk_text(f.text, 180, 30, drop_boilerplate=True)
        plain = chunk_text(f.text, 180, 30)
        if f.rel.startswith("zz_boilerplate_"):
            assert sum(len(c.split()) for c in kept) < sum(len(c.split()) for c in plain) / 2
        else:
            assert kept == plain, f.rel


def test_short_leftover_chunks_are_dropped_only_with_the_filter() -> None:
    text = "References\n\nCastellanos, R. (2023). Clubs and Coalitions. Journal of Things, 18(2)."
    assert chunk_text(text, 180, 30) == [text]
    assert chunk_text(text, 180, 30, drop_boilerplate=True) == []
    short = "Too short to matter."
    assert len(short.split()) < MIN_CHUNK_WORDS
    assert chunk_text(short, 180, 30, drop_boilerplate=True) == []


def test_word_list_rule_spares_languages_without_english_stopwords() -> None:
    german = (
        "Die Erweiterung der Gruppe veränderte die Wahrnehmung fast über Nacht. Ägypten, Äthiopien, "
        "Iran und die Vereinigten Arabischen Emirate nahmen Anfang 2024 ihre Plätze ein."
    )
    assert chunk_text(german, 180, 30, drop_boilerplate=True) == [german]


# Inputs that make a backtracking pattern go quadratic or worse, each about 1 MB: one long token, URL-ish
# and e-mail-ish runs, and the shapes the citation and separator rules look for.
_MB = 1_000_000
_HOSTILE_TEXTS = {
    "one token": "a" * _MB,
    "url": "http://" + "a" * _MB,
    "www": "www." * (_MB // 4),
    "at signs": "a@" * (_MB // 2),
    "dots": "a." * (_MB // 2),
    "local part, no domain": "a.b+c-" * (_MB // 6) + "@",
    "domain without a dot": "a@" + "b-" * (_MB // 2),
    "e-mail chain": "a@b.c" * (_MB // 5),
    "citation initials": "Castellanos, " + "R. " * (_MB // 3),
    "hyphenated surname": "A" + "-Bc" * (_MB // 3),
    "separators": "x | " * (_MB // 4),
    "spaces after a newline": "x\n" + " \t" * (_MB // 2),
    "list markers": "1. (2024). " * (_MB // 11),
    "bracketed markers, one line each": "[1] doi 2024/1\n" * (_MB // 15),
    "a name that never ends": "Ab " * (_MB // 3) + "is a fellow",
    "notice cues": "cookie consent sign up " * (_MB // 23),
    "handles": "@a" * (_MB // 2),
}
_HOSTILE_SCRIPT = """
import sys
from runner.retrieval.chunking import boilerplate_reason, chunk_text, split_paragraphs
from tests.test_chunking import _HOSTILE_TEXTS
for name, text in _HOSTILE_TEXTS.items():
    boilerplate_reason(text)
    split_paragraphs(text)
    chunk_text(text, 180, 30, drop_boilerplate=True)
    print(name, flush=True)
"""


def test_text_rules_take_linear_time_on_hostile_input() -> None:
    """A 40 KB token once took 17 s in the URL pattern and 500 KB most of an hour. Each 1 MB input takes
    well under a second now; the bound here only stops a regression from hanging the suite."""
    import subprocess
    import sys

    try:
        proc = subprocess.run(
            [sys.executable, "-c", _HOSTILE_SCRIPT],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        done = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"still running after 60 s; finished: {done.split()!r}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == list(_HOSTILE_TEXTS)
