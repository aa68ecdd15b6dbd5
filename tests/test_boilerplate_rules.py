"""The boilerplate rules for reference lists, author bios, newsletter and cookie notices and site furniture:
hand-written examples of each (in the shapes seen on saved web pages), and prose that only looks like one (a
paragraph that starts with a number, mentions a year, cites a source, names a director)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.retrieval.boilerplate import boilerplate_reason
from runner.retrieval.chunking import SHORT_CHUNK, chunk_file, chunk_text
from runner.spec import SourceFile

FLAGGED = {
    "numbered reference list": (
        "1. International Energy Agency (2024). Global Critical Minerals Outlook 2024. Paris: IEA.\n"
        "2. European Commission (2023). Study on the Critical Raw Materials for the EU. Luxembourg: "
        "Publications Office of the European Union.\n"
        "3. Gielen, D. and M. Lyons (2022). Critical materials for the energy transition. Abu Dhabi: IRENA.",
        "reference list",
    ),
    "bracketed reference list": (
        "[1] Regulation (EU) 2024/1252 of the European Parliament and of the Council of 11 April 2024 "
        "establishing a framework for ensuring a secure and sustainable supply of critical raw materials.\n"
        "[2] U.S. Geological Survey, Mineral Commodity Summaries 2024, https://doi.org/10.3133/mcs2024.",
        "reference list",
    ),
    "one numbered reference": (
        "1. International Energy Agency (2024). Global Critical Minerals Outlook 2024. Paris: IEA.",
        "reference list",
    ),
    "one bracketed reference": (
        "[12] World Bank (2020). Minerals for Climate Action: The Mineral Intensity of the Clean Energy "
        "Transition. Washington, DC: World Bank.",
        "reference list",
    ),
    "author bio": (
        "Maria Okonkwo is a senior fellow at the Centre for Resource Policy, where she leads its work on "
        "critical minerals. She previously advised the African Union on mining codes and holds a PhD from SOAS.",
        "author bio",
    ),
    "about the author": (
        "About the author: Tomás Rivera covers energy markets for Example Weekly. Follow him on X at @trivera.",
        "author bio",
    ),
    "newsletter": (
        "Sign up for our weekly newsletter and get the best of our energy coverage delivered to your inbox "
        "every Friday.",
        "newsletter",
    ),
    "cookie banner": (
        "We use cookies to give you the best experience on our website. By clicking Accept all you consent "
        "to our use of cookies. Read our privacy policy.",
        "cookie notice",
    ),
    "about and cookie banner": (
        "About Example Institute: an independent think tank on energy and resources. Contact us. Careers. "
        "Privacy policy. This site uses cookies; manage preferences.",
        "cookie notice",
    ),
    "FAQ furniture": (
        "Frequently asked questions: How do I reset my password? Can I share articles with a colleague? "
        "How do I cancel my subscription? Contact customer service.",
        "site furniture",
    ),
    "helpful and back to top": ("Was this article helpful? Yes / No. Back to top.", "site furniture"),
}

PROSE = {
    "numbered advice": (
        "1. Diversify suppliers. Japan should sign long-term offtake agreements with producers in Australia, "
        "Canada and Africa, and help finance processing plants outside China."
    ),
    "starts with a year": (
        "2024 was the year the price of lithium collapsed, after two years in which it had risen more than "
        "sixfold."
    ),
    "numbered with a year": (
        "3) The third lesson is that stockpiles matter: in 2010 China cut rare-earth exports to Japan, and "
        "prices rose tenfold within months."
    ),
    "cites a source": (
        "As the International Energy Agency (2024) notes, demand for lithium could grow fortyfold by 2040 "
        "under a net-zero scenario."
    ),
    "numbered, cites a source": (
        "2. As the International Energy Agency (2024) notes, demand for lithium could grow fortyfold by 2040, "
        "and the supply response has so far been slow."
    ),
    "names a director": (
        "Fatih Birol is the executive director of the International Energy Agency, and he has warned that "
        "supply chains for critical minerals are far more concentrated than those for oil."
    ),
    "signs up to a partnership": (
        "Governments that sign up to the Minerals Security Partnership promise to share information on "
        "projects, and several have subscribed to joint financing."
    ),
    "cookies once": "We use cookies to improve your experience, and you can change that at any time.",
    "a topical question": (
        "What are critical minerals? They are raw materials that are essential to modern technologies and "
        "whose supply is at risk, such as lithium, cobalt, nickel, graphite and the rare earths."
    ),
    "a bracketed aside": (
        "[Updated] The ministry revised its estimate in March 2025, after the new deposits in Sweden were "
        "surveyed, and now expects production to begin in 2031."
    ),
}


@pytest.mark.parametrize(("text", "reason"), FLAGGED.values(), ids=FLAGGED.keys())
def test_furniture_is_recognised(text: str, reason: str) -> None:
    assert boilerplate_reason(text) == reason


@pytest.mark.parametrize("text", PROSE.values(), ids=PROSE.keys())
def test_prose_that_looks_like_furniture_is_kept(text: str) -> None:
    assert boilerplate_reason(text) is None


def test_a_page_keeps_its_prose_and_says_what_it_dropped() -> None:
    page = "\n\n".join(
        [
            "# Critical minerals and the energy transition",
            *PROSE.values(),
            *(text for text, _ in FLAGGED.values()),
        ]
    )
    dropped: list[tuple[str, str]] = []
    chunks = chunk_text(page, 400, 30, drop_boilerplate=True, dropped=dropped)
    kept = "\n\n".join(chunks)
    assert all(p in kept for p in PROSE.values())
    assert not any(text in kept for text, _ in FLAGGED.values())
    assert sorted(dropped) == sorted((reason, text) for text, reason in FLAGGED.values())


def test_chunk_file_reports_drops_with_their_file(tmp_path: Path) -> None:
    text = "\n\n".join([PROSE["starts with a year"], FLAGGED["newsletter"][0], "Too short."])
    dropped: list[tuple[str, str]] = []
    chunks = chunk_file(SourceFile(tmp_path / "b.md", "a/b.md", "0" * 64, text), 20, 5, True, dropped=dropped)
    assert [(c.source, c.text) for c in chunks] == [("a/b.md", PROSE["starts with a year"])]
    assert dropped == [("newsletter", FLAGGED["newsletter"][0]), (SHORT_CHUNK, "Too short.")]


def test_pov_ingest_says_what_it_dropped_and_what_it_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli import main

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "corpus").mkdir()
    long_prose = " ".join([PROSE["cites a source"]] * 14)  # 266 words: over MiniLM's 256 tokens
    page = [PROSE["numbered advice"], FLAGGED["newsletter"][0], long_prose, FLAGGED["author bio"][0]]
    (tmp_path / "corpus" / "page.md").write_text("\n\n".join(page))
    (tmp_path / "t.j2").write_text("{{ question }} {{ context }}")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: s\ncorpus: {path: corpus, collection: col, chunking: {max_words: 280, overlap_words: 10}}\n"
        "questions: [{id: q, text: 'Why?'}]\npov_sets: {a: [A.]}\npersonas: {p: P.}\ntemplates: {t: t.j2}\n"
        "models: {m: {name: 'builtin:tiny-llama'}}\n"
    )
    assert main(["ingest", str(spec), "--show-dropped"]) == 0
    out, err = capsys.readouterr()
    assert "dropped as boilerplate: 2 (newsletter 1, author bio 1)" in out
    assert f"page.md: newsletter: {FLAGGED['newsletter'][0][:60]}" in out
    assert f"page.md: author bio: {FLAGGED['author bio'][0][:60]}" in out
    assert "longer than the embedder's window (256 tokens): 1 chunks" in out
    assert "warning: 1 of 2 chunks are longer than all-MiniLM-L6-v2's window of 256 tokens" in err
    assert main(["ingest", str(spec), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["dropped"], got["truncated"], got["window"]) == ({"newsletter": 1, "author bio": 1}, 1, 256)
    # The corpus is unchanged, so nothing is cut for the collection, but --show-dropped still lists each one.
    assert main(["ingest", str(spec), "--show-dropped"]) == 0
    out = capsys.readouterr().out
    assert "chunks: added 0, updated 0, deleted 0, unchanged 2" in out
    assert f"page.md: newsletter: {FLAGGED['newsletter'][0][:60]}" in out
