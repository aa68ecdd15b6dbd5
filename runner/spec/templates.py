"""Templates: the machine-readable header, sandboxed rendering, and the variables the runner provides.

A template starts with a Jinja comment whose body is YAML after `pov:`, declaring the sections the answer
must have and their word ranges (read by the output checks) and how many instructions the template gives
(read by the prompt-complexity report):

    {#- pov:
    sections:
      - {title: "Context Summary", words: [300, 400]}
      - {title: "Opinion", words: [200, 300]}
    instructions: 5
    -#}

Templates render in the sandbox of runner.spec.sandbox: a template from a pull request cannot reach Python
internals, run past its render budget (time and size), or change its variables; a misspelt variable fails
`pov validate` rather than a run.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import Problem, SpecError
from runner.spec.sandbox import FOLD_LIMIT, budget, environment, read_only

HEADER_RE = re.compile(r"\A\s*\{#-?\s*pov:\s*\n(?P<body>.*?)-?#\}", re.S)

VARIABLES = ("persona", "question", "question_id", "context", "chunks", "pov_set", "pov_statements")
"""What a template may use: the persona text, the question text and id, the final context (stage-3 chunks
joined by blank lines), the chunks as dicts (`id`, `text`, `score`, `rank`), and the POV set's name and
statements."""


@dataclass(frozen=True)
class Section:
    title: str
    words: tuple[int, int] | None = None
    heading: bool = True
    """False when the whole answer is this section and no heading is expected."""


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    path: Path
    text: str
    sections: tuple[Section, ...] = ()
    instructions: int | None = None
    header_line: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def parse_header(name: str, path: Path, text: str, label: str) -> TemplateInfo:
    """Read the `pov:` header of a template (absent header: no declared sections)."""
    from runner.spec.safe_yaml import parse_yaml

    m = HEADER_RE.match(text)
    if not m:
        return TemplateInfo(name, path, text)
    offset = text[: m.start("body")].count("\n")
    try:
        loaded = parse_yaml(m.group("body"), label)
    except SpecError as e:
        raise SpecError(
            [Problem(p.file, p.line + offset, p.col, "header", p.message) for p in e.problems]
        ) from None
    data = loaded.data or {}
    problems: list[Problem] = []

    def bad(key: tuple[Any, ...], msg: str) -> None:
        mark = loaded.marks.get(key) or loaded.marks.get(())
        problems.append(
            Problem(
                label,
                (mark.line if mark else 1) + offset,
                mark.col if mark else 0,
                "header." + ".".join(map(str, key)) if key else "header",
                msg,
            )
        )

    if not isinstance(data, dict):
        bad((), "the pov: header must be a mapping with `sections` and `instructions`")
        raise SpecError(problems)
    for key in data:
        if key not in ("sections", "instructions", "description"):
            bad((key,), f"unknown header key {key!r} (known: sections, instructions, description)")
    sections: list[Section] = []
    raw_sections = data.get("sections") or []
    if not isinstance(raw_sections, list):
        bad(("sections",), "sections is a list of {title: str, words: [min, max], heading: bool}")
        raw_sections = []
    for i, sec in enumerate(raw_sections):
        if not isinstance(sec, dict) or not isinstance(sec.get("title"), str):
            bad(("sections", i), "each section is {title: str, words: [min, max], heading: bool}")
            continue
        words = sec.get("words")
        if words is not None and not (
            isinstance(words, list)
            and len(words) == 2
            and all(isinstance(w, int) and not isinstance(w, bool) for w in words)
            and 0 <= words[0] <= words[1]
        ):
            bad(("sections", i, "words"), "words is [min, max] with 0 <= min <= max")
            words = None
        unknown = set(sec) - {"title", "words", "heading"}
        if unknown:
            bad(("sections", i), f"unknown section key(s): {', '.join(sorted(map(str, unknown)))}")
        if not isinstance(sec.get("heading", True), bool):
            # bool("no") is True: a quoted value would silently mean the opposite of what was written.
            bad(("sections", i, "heading"), "heading is true or false")
        sections.append(
            Section(sec["title"], tuple(words) if words else None, bool(sec.get("heading", True)))
        )
    instructions = data.get("instructions")
    if instructions is not None and (
        not isinstance(instructions, int) or isinstance(instructions, bool) or instructions < 0
    ):
        bad(("instructions",), "instructions is a whole number >= 0")
        instructions = None
    if problems:
        raise SpecError(problems)
    return TemplateInfo(name, path, text, tuple(sections), instructions, offset + 1)


def compile_template(info: TemplateInfo, label: str) -> Any:
    from jinja2 import TemplateSyntaxError

    try:
        with budget(FOLD_LIMIT):  # compiling folds constant expressions into the code: keep those small
            return environment().from_string(info.text)
    except TemplateSyntaxError as e:
        raise SpecError([Problem(label, e.lineno or 1, 0, "", f"template syntax: {e.message}")]) from None


def render(template: Any, variables: Mapping[str, Any]) -> str:
    """Render within the budget (RENDER_SECONDS, MAX_OUTPUT) on read-only copies of `variables`; a template
    over the budget, or trying to change a variable, raises jinja2's SecurityError."""
    with budget():
        return str(template.render(**{k: read_only(v) for k, v in variables.items()}))


def sample_variables() -> dict[str, Any]:
    """Stand-in values of every variable, to render a template once at validation time."""
    chunks = [
        {"id": f"chunk{i}", "text": f"Sample chunk {i}.", "score": 1.0 - i / 10, "rank": i + 1}
        for i in range(3)
    ]
    return {
        "persona": "You are a careful analyst.",
        "question": "What is the sample question?",
        "question_id": "sample",
        "context": context_text(chunks),
        "chunks": chunks,
        "pov_set": "sample",
        "pov_statements": ["A sample point of view."],
    }


def check_renders(info: TemplateInfo, label: str) -> None:
    """Render once with sample values; an undefined variable or sandbox violation is a SpecError."""
    from jinja2 import UndefinedError
    from jinja2.exceptions import SecurityError

    template = compile_template(info, label)
    try:
        render(template, sample_variables())
    except Exception as e:  # any failure of a user's template (1/0 included) is bad input, not a crash
        line = 1
        for frame in traceback.extract_tb(e.__traceback__):
            if frame.filename == "<template>" and frame.lineno:
                line = frame.lineno
        hint = f" (available: {', '.join(VARIABLES)})" if isinstance(e, UndefinedError) else ""
        kind = "unsafe operation" if isinstance(e, SecurityError) else "does not render"
        raise SpecError([Problem(label, line, 0, "", f"template {kind}: {e}{hint}")]) from None


def context_text(chunks: list[dict[str, Any]]) -> str:
    return "\n\n".join(c["text"] for c in chunks)
