"""Prompt complexity of real templates rendered with the runner's own renderer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner.run.complexity import count_instructions, measure
from runner.spec.templates import TemplateInfo, compile_template, parse_header, render, sample_variables

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ["summary_opinion", "opinion_only", "numbered_context"]


def template(name: str) -> TemplateInfo:
    path = ROOT / "templates" / f"{name}.j2"
    return parse_header(name, path, path.read_text(), str(path))


def rendered(info: TemplateInfo) -> tuple[str, str, str]:
    variables = sample_variables()
    return render(compile_template(info, info.name), variables), variables["context"], variables["persona"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_declared_template_shape(name):
    info = template(name)
    prompt, context, persona = rendered(info)
    m = measure(prompt, context, info, persona, None)
    assert set(m) == {
        "complexity_prompt_tokens",
        "complexity_context_tokens",
        "complexity_sections",
        "complexity_word_constraints",
        "complexity_instructions",
        "complexity_persona_words",
    }
    assert m["complexity_sections"] == len(info.sections)
    assert m["complexity_word_constraints"] == sum(1 for s in info.sections if s.words)
    assert m["complexity_instructions"] == info.instructions
    assert m["complexity_persona_words"] == 5  # "You are a careful analyst."
    assert 0 < m["complexity_context_tokens"] < m["complexity_prompt_tokens"]


def test_summary_opinion_is_more_complex_than_opinion_only():
    a, b = template("summary_opinion"), template("opinion_only")
    ma, mb = (measure(*rendered(t)[:2], t, "p", None) for t in (a, b))
    assert ma["complexity_sections"] > mb["complexity_sections"]
    assert ma["complexity_instructions"] > mb["complexity_instructions"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_counted_instructions_match_the_declared_ones(name):
    # The sample templates number their rules; counting them must agree with the header.
    info = template(name)
    assert count_instructions(info.text) == info.instructions


def test_undeclared_instructions_are_counted_from_the_text():
    info = template("summary_opinion")
    undeclared = TemplateInfo(info.name, info.path, info.text, info.sections, None)
    m = measure("x", "", undeclared, "p", None)
    assert m["complexity_instructions"] == len(re.findall(r"^\d+\. ", info.text, re.M))


def test_imperative_sentences_without_a_list():
    text = (
        "{{ persona }}\nRead the context below. Write a short answer in plain English. "
        "The passages were retrieved for you. You must cite the passage ids. Context follows.\n"
        "{{ context }}\n{% if question %}{{ question }}{% endif %}"
    )
    # Read..., Write..., You must cite...; the two statements are not instructions.
    assert count_instructions(text) == 3


def test_tokenizer_is_used_when_given():
    info = template("opinion_only")
    prompt, context, persona = rendered(info)
    chars = measure(prompt, context, info, persona, len)
    assert chars["complexity_prompt_tokens"] == len(prompt)
    assert chars["complexity_context_tokens"] == len(context)
    words = measure(prompt, context, info, persona, None)
    assert words["complexity_prompt_tokens"] == len(prompt.split())


def test_empty_context_and_persona():
    m = measure("only a prompt", "", template("opinion_only"), "", None)
    assert m["complexity_context_tokens"] == 0 and m["complexity_persona_words"] == 0
