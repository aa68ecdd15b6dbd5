"""The output checks on real answers: SmolLM2-135M-Instruct's answers over the quickstart's matrix
(tests/fixtures/real_answers.jsonl, made by make_real_answers.py) against what a reader says of them
(real_answers_labels.yaml). A check that stops finding a real duplicated Opinion, a real missing section,
a real loop or a pasted context fails here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.run.checks import CHECK_TAG_PREFIX, evaluate, split_sections
from runner.spec import Checks
from runner.spec.templates import TemplateInfo, parse_header

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
AXES = ("template", "persona", "pov_set", "question")


def _answers() -> dict[tuple[str, ...], dict[str, Any]]:
    lines = (FIXTURES / "real_answers.jsonl").read_text(encoding="utf-8").splitlines()
    return {tuple(d[a] for a in AXES): d for d in map(json.loads, lines)}


ANSWERS = _answers()
LABELS = yaml.safe_load((FIXTURES / "real_answers_labels.yaml").read_text(encoding="utf-8"))


def _template(name: str) -> TemplateInfo:
    path = ROOT / "templates" / f"{name}.j2"
    return parse_header(name, path, path.read_text(encoding="utf-8"), str(path))


@pytest.fixture(scope="module")
def embed(minilm: Any) -> Any:
    return lambda texts: minilm.embed(texts, "document")  # as the run embeds for its checks


def test_the_fixture_is_real_model_output() -> None:
    """32 answers of the pinned model, each with the context and POV statements the checks read."""
    assert len(ANSWERS) == 32
    assert {d["model"] for d in ANSWERS.values()} == {"builtin:smollm2-135m-instruct"}
    assert len({d["model_revision"] for d in ANSWERS.values()}) == 1
    assert all(d["output"].strip() and d["context"] and d["pov_statements"] for d in ANSWERS.values())


@pytest.mark.parametrize("label", LABELS, ids=lambda lb: "-".join(lb["cell"][a][:12] for a in AXES))
def test_checks_agree_with_the_reader(label: dict[str, Any], embed: Any) -> None:
    answer = ANSWERS[tuple(label["cell"][a] for a in AXES)]
    _, tags = evaluate(
        answer["output"],
        _template(answer["template"]),
        answer["context"],
        answer["pov_statements"],
        Checks(),
        embed,
    )
    got = {name: tags.get(CHECK_TAG_PREFIX + name, "absent") for name in label["expect"]}
    assert got == label["expect"], f"{label['why']}\n---\n{answer['output'][:600]}"


def test_every_style_of_heading_the_model_wrote_is_found() -> None:
    """Where a reader sees a Context Summary heading in a real answer, so does the section splitter."""
    t = _template("brief_summary_opinion")
    headed = [d for d in ANSWERS.values() if d["template"] == t.name and "Context Summary" in d["output"]]
    assert headed
    for d in headed:
        summary = split_sections(d["output"], t.sections)[0]
        assert summary.present and summary.text, d["output"][:200]


def test_pass_rates_differ_between_the_templates(embed: Any) -> None:
    """The point of the matrix: the two brief templates do not fail the same way."""
    rates: dict[str, dict[str, list[int]]] = {}
    for d in ANSWERS.values():
        if not d["template"].startswith("brief_"):
            continue
        _, tags = evaluate(
            d["output"], _template(d["template"]), d["context"], d["pov_statements"], Checks(), embed
        )
        for name, verdict in tags.items():
            tally = rates.setdefault(name, {}).setdefault(d["template"], [0, 0])
            tally[0] += verdict == "pass"
            tally[1] += 1
    sections = rates[CHECK_TAG_PREFIX + "sections"]
    assert sections["brief_opinion"] == [8, 8]  # one unheaded section: the whole answer
    assert sections["brief_summary_opinion"][0] < 8  # the two-heading template loses a heading
    copied = rates[CHECK_TAG_PREFIX + "copied"]
    assert copied["brief_opinion"][0] < copied["brief_summary_opinion"][0]  # opinion-only pastes more
