"""Bounded templates: every render, at validation and at run time, has a time and an output-size budget, and a
template sees read-only copies of its variables, so that one cell's prompt cannot change another's.

Templates that would hang without a bound run in a subprocess with a timeout, so that a missing bound fails the
test instead of hanging the suite."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from runner import cli
from runner.errors import SpecError
from runner.retrieval import RetrievalResult, Stage
from runner.run.prepare import prepare, retrieval_keys
from runner.spec import Experiment, expand, load_spec
from runner.spec.templates import TemplateInfo, check_renders, compile_template, render, sample_variables

HERE = Path(__file__).parent
REPO = HERE.parent
BASE = HERE / "bad_specs" / "fixtures" / "base.yaml"
WAIT_S = 60
"""Bound on a subprocess that must finish: far above the 2 s budget plus interpreter start on a busy machine."""


def _spec(tmp_path: Path, template: str) -> Path:
    (tmp_path / "t.j2").write_text(template)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"extends: {BASE}\nname: bounds\ntemplates:\n  simple: t.j2\n")
    return spec


def _pov_command() -> list[str]:
    script = Path(sys.executable).with_name("pov")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner.cli"]


def _stub(exp: Experiment, texts: dict[str, list[str]]) -> dict[Any, RetrievalResult]:
    """Retrieval results whose final chunks are `texts[question]`, for every key the cells need."""
    out = {}
    for key in retrieval_keys(expand(exp)):
        q, pov, k = key[:3]
        chunk_texts = texts[q]
        ids = [f"{q}-{j}" for j in range(len(chunk_texts))]
        scores = [1.0 - j / 100 for j in range(len(chunk_texts))]
        stages = [Stage(name, ids, list(chunk_texts), scores) for name in ("vector", "query", "pov")]
        out[key] = RetrievalResult(q, pov, k, stages)
    return out


def _words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


# --- time


def test_nested_loops_end_pov_validate_with_a_clear_error(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        "{{ persona }}\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
    )
    try:
        proc = subprocess.run(
            [*_pov_command(), "validate", str(spec)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=WAIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pov validate did not return within {WAIT_S} s")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert "t.j2:2:" in proc.stderr, proc.stderr
    assert "more than 2 s" in proc.stderr and "render budget" in proc.stderr, proc.stderr


SLOW_TEMPLATES = {
    # No call inside the inner loops: only the loops themselves can notice the time.
    "string loops": "{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}{% endfor %}{% endfor %}",
    "exponential macro": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}"
    ),
    "recursive loop": (
        "{% for x in [1, 2] recursive %}{% if loop.depth < 60 %}{{ loop([1, 2]) }}{% endif %}{% endfor %}"
    ),
}


def test_slow_templates_fail_validation_within_the_budget() -> None:
    # The budget is shortened in the child so that three templates take a second, not six.
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        import runner.spec.sandbox as sandbox
        import runner.spec.templates as t
        from runner.errors import SpecError
        sandbox.RENDER_SECONDS = 0.3
        out = {{}}
        for name, text in {SLOW_TEMPLATES!r}.items():
            try:
                t.check_renders(t.TemplateInfo("t", Path("t.j2"), text), "t.j2")
                out[name] = "rendered"
            except SpecError as e:
                out[name] = str(e)
        print(json.dumps(out))
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=WAIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"rendering did not stop within {WAIT_S} s")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for name in SLOW_TEMPLATES:
        assert "render budget" in out[name] and out[name].startswith("t.j2:1:"), (name, out[name])


def test_a_cell_whose_chunks_make_the_template_slow_is_crashed_not_the_run(tmp_path: Path) -> None:
    """Sample values at validation are short; a cell with a long context would loop for hours."""
    template = (
        "{{ persona }}\n"
        "{% for a in context %}{% for b in context %}{% for c in context %}{% endfor %}{% endfor %}{% endfor %}\n"
    )
    spec = _spec(tmp_path, template)
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        import runner.spec.sandbox as sandbox
        from runner.retrieval import RetrievalResult, Stage
        from runner.run.prepare import prepare, retrieval_keys
        from runner.spec import expand, load_spec
        sandbox.RENDER_SECONDS = 0.3
        exp = load_spec(Path({str(spec)!r}))
        cells = expand(exp)
        texts = {{"q1": ["Short."], "q2": [{_words(300)!r}]}}
        retrieved = {{}}
        for key in retrieval_keys(cells):
            q, pov, k = key[:3]
            stages = [Stage(n, ["c"], texts[q], [1.0]) for n in ("vector", "query", "pov")]
            retrieved[key] = RetrievalResult(q, pov, k, stages)
        prepared = prepare(exp, cells, retrieved)
        print(json.dumps({{p.cell.question + "/" + p.cell.id: p.error for p in prepared.values()}}))
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=WAIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"preparing the cells did not finish within {WAIT_S} s")
    assert proc.returncode == 0, proc.stderr
    errors = json.loads(proc.stdout)
    assert len(errors) == 8
    for key, error in errors.items():
        if key.startswith("q1/"):
            assert error is None, error
        else:
            assert error and "render budget" in error and "took more than" in error, error
            assert "t.j2:2)" in error, error


# --- size


GROWTH = {
    "replace": "{{ ('x' * 100000)|replace('x', 'y' * 1000) }}",
    "replace method": "{{ ('x' * 100000).replace('x', 'y' * 1000) }}",
    "center filter": "{{ 'x'|center(100000000) }}",
    "center method": "{{ 'x'.center(100000000) }}",
    "ljust": "{{ 'x'.ljust(100000000) }}",
    "rjust": "{{ 'x'.rjust(100000000) }}",
    "zfill": "{{ '1'.zfill(100000000) }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(100000) }}",
    "format filter": "{{ '%100000000s'|format('x') }}",
    "percent": "{{ '%100000000s' % 'x' }}",
    "str.format": "{{ '{:100000000}'.format('x') }}",
    "join filter": "{{ range(100000)|join('y' * 1000) }}",
    "join method": "{{ ('y' * 1000).join(('x' * 100000)|list) }}",
    "indent": "{{ ('x\\n' * 100000)|indent(1000) }}",
    "concat": (
        "{% set ns = namespace(s='x' * 1000000) %}"
        "{% for i in range(6) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "plus": "{{ (('x' * 1000000) + ('x' * 1000000))|length }}",
    "list repeat": "{{ [('x' * 100000)] * 1000 }}",
    "nested literals": (
        "{% set a = ['x' * 100000] * 10 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
        "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c|length }}"
    ),
    "to_bytes": "{{ (1).to_bytes(100000000, 'big')|length }}",
    "output": "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}",
}


@pytest.mark.parametrize("text", GROWTH.values(), ids=GROWTH.keys())
def test_growth_is_capped_by_the_size_of_the_result(text: str) -> None:
    info = TemplateInfo("t", Path("t.j2"), text)
    with pytest.raises(SecurityError, match="render budget"):
        render(compile_template(info, "t.j2"), sample_variables())
    with pytest.raises(SpecError, match=r"t\.j2:1: .*render budget"):
        check_renders(info, "t.j2")


def test_pov_validate_names_the_template_that_builds_too_much(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, "{{ persona }}\n{{ ('x' * 100000)|replace('x', 'y' * 1000) }}\n")
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "t.j2:2:" in err and "render budget" in err and "Traceback" not in err, err


def test_a_cell_whose_chunks_make_the_prompt_too_big_is_crashed_not_the_run(tmp_path: Path) -> None:
    exp = load_spec(_spec(tmp_path, "{{ persona }}\n{{ context|replace(' ', context) }}\n"))
    cells = expand(exp)
    long = [_words(180, f"c{j}-") for j in range(5)]  # ~900 spaces, ~5 KB: a 4.5 MB prompt
    prepared = prepare(exp, cells, _stub(exp, {"q1": ["Short chunk text."], "q2": long}))
    for prep in prepared.values():
        if prep.cell.question == "q1":
            assert prep.error is None and prep.prompt.startswith("You are")
        else:
            assert prep.error and "render budget" in prep.error and "t.j2:2)" in prep.error, prep.error
            assert prep.prompt == ""


def test_legitimate_prompts_fit_the_budget() -> None:
    chunks = [{"id": f"c{i}", "text": _words(180), "score": 0.5, "rank": i + 1} for i in range(5)]
    variables = {**sample_variables(), "chunks": chunks, "context": "\n\n".join(c["text"] for c in chunks)}
    for path in sorted((REPO / "templates").glob("*.j2")):
        info = TemplateInfo(path.stem, path, path.read_text())
        assert len(render(compile_template(info, path.name), variables)) > 4000
    text = "{{ '-' * 80 }}{{ 'x'|center(80) }}{{ 'x' * 900000 }}{{ range(10)|join(', ') }}{{ '%5.2f' % 3.14159 }}"
    out = render(compile_template(TemplateInfo("t", Path("t.j2"), text), "t.j2"), {})
    assert out.startswith("-" * 80) and out.endswith("0, 1, 2, 3, 4, 5, 6, 7, 8, 9 3.14")


# --- shared state


MUTATIONS = {
    "pov_statements.append": "{% set _ = pov_statements.append('X') %}{{ pov_statements|length }}",
    "chunks.append": "{% set _ = chunks.append(chunks[0]) %}{{ chunks|length }}",
    "chunk update": "{% set _ = chunks[0].update({'text': 'X'}) %}{{ chunks[0].text }}",
    "chunks.pop": "{% set _ = chunks.pop() %}{{ chunks|length }}",
    "pov_statements.clear": "{% set _ = pov_statements.clear() %}{{ pov_statements|length }}",
}


@pytest.mark.parametrize("text", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_a_template_cannot_change_its_variables(text: str) -> None:
    variables = sample_variables()
    before = json.dumps(variables, sort_keys=True)
    with pytest.raises(SpecError, match=r"t\.j2:1: .*cannot change"):
        check_renders(TemplateInfo("t", Path("t.j2"), text), "t.j2")
    with pytest.raises(SecurityError):
        render(compile_template(TemplateInfo("t", Path("t.j2"), text), "t.j2"), variables)
    assert json.dumps(variables, sort_keys=True) == before


def test_a_template_cannot_grow_the_pov_set_seen_by_later_cells(tmp_path: Path) -> None:
    """The mutation hides from the sample values, so validation passes; at run time every cell must see the
    POV set as written, and the cells that try are crashed with a clear error."""
    template = (
        "{{ persona }}\n"
        "{% if question_id != 'sample' %}{% set _ = pov_statements.append('X') %}{% endif %}"
        "size={{ pov_statements|length }}\n"
    )
    exp = load_spec(_spec(tmp_path, "{{ persona }}\nsize={{ pov_statements|length }}\n"))
    exp.templates["simple"] = TemplateInfo("simple", tmp_path / "t.j2", template)
    written = {name: list(s) for name, s in exp.pov_sets.items()}
    prepared = prepare(exp, expand(exp), _stub(exp, {"q1": ["One."], "q2": ["Two."]}))
    assert {name: list(s) for name, s in exp.pov_sets.items()} == written
    for prep in prepared.values():
        assert prep.error and "cannot change" in prep.error and "`append`" in prep.error, prep.error
        assert "t.j2:2)" in prep.error, prep.error


def test_variables_keep_their_text_form() -> None:
    """Read-only copies print, compare and serialise as the lists and dicts they copy: a template that prints
    a variable makes the same prompt as before."""
    variables = sample_variables()
    text = (
        "{{ pov_statements }}|{{ chunks[0] }}|{{ chunks|tojson }}|{{ pov_statements + ['more'] }}|"
        "{{ chunks[0].text }}|{{ chunks|map(attribute='rank')|list }}|{{ chunks[0]|dictsort }}"
    )
    plain = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    expected = plain.from_string(text).render(**variables)
    assert render(compile_template(TemplateInfo("t", Path("t.j2"), text), "t.j2"), variables) == expected


def test_shipped_templates_render_as_plain_jinja_does() -> None:
    chunks = [
        {"id": f"c{i}", "text": _words(40) + " & <b> 'q' \"d\"", "score": 0.5, "rank": i + 1}
        for i in range(5)
    ]
    variables = {**sample_variables(), "chunks": chunks, "context": "\n\n".join(c["text"] for c in chunks)}
    plain = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    for path in sorted((REPO / "templates").glob("*.j2")):
        text = path.read_text()
        info = TemplateInfo(path.stem, path, text)
        assert render(compile_template(info, path.name), variables) == plain.from_string(text).render(
            **variables
        )
