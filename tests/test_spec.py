"""Spec loading: extends, --set, matrix include/exclude/question selection, template headers, sandboxed
rendering and the safe YAML loader."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import OLD_QUICKSTART, OLD_QUICKSTART_HASH, copy_brics_project
from jinja2 import UndefinedError
from jinja2.sandbox import SecurityError

from runner.errors import SpecError
from runner.spec import expand, load_spec, safe_yaml
from runner.spec.safe_yaml import parse_yaml
from runner.spec.templates import Section, TemplateInfo, check_renders, compile_template, parse_header, render

TEMPLATE = textwrap.dedent(
    """\
    {#- pov:
    sections:
      - {title: "Summary", words: [30, 60]}
      - {title: "Opinion", words: [20, 40], heading: false}
    instructions: 3
    description: two parts
    -#}
    {{ persona }}
    Q: {{ question }}
    {% for c in chunks %}[{{ c.rank }}] {{ c.text }}
    {% endfor %}"""
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small valid project: corpus, questions, two POV sets, two templates, and spec.yaml."""
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    write(tmp_path / "data" / "corpus" / "a.md", "# A\n\nSome text.\n")
    write(
        tmp_path / "data" / "questions.yaml",
        """\
        questions:
          - {id: q1, text: "First?"}
          - {id: q2, text: "Second?"}
          - {id: q3, text: "Third?"}
        """,
    )
    write(tmp_path / "data" / "pov_alpha.yaml", "statements: ['  Alpha one.  ', 'Alpha two.', '   ']\n")
    write(tmp_path / "templates" / "t1.j2", TEMPLATE)
    write(tmp_path / "templates" / "t2.j2", "{{ persona }} {{ question }} {{ context }}\n")
    write(
        tmp_path / "specs" / "spec.yaml",
        """\
        name: spec
        corpus: {path: ../data/corpus, collection: col-a, chunking: {max_words: 100, overlap_words: 10}}
        questions: ../data/questions.yaml
        pov_sets:
          alpha: ../data/pov_alpha.yaml
          beta: [Beta one., Beta two.]
        personas: {professor: You are a professor., assistant: You are an assistant.}
        templates: {t1: ../templates/t1.j2, t2: ../templates/t2.j2}
        models: {tiny: {name: "builtin:tiny-llama"}}
        generation: {max_new_tokens: 100, seed: 3}
        matrix:
          persona: [professor, assistant]
        """,
    )
    return tmp_path


def axes_of(cells: list) -> set[tuple]:
    return {(c.model, c.template, c.persona, c.pov_set, c.k, c.question) for c in cells}


# --- extends


def test_extends_deep_merges_and_the_child_wins(project: Path) -> None:
    child = write(
        project / "specs" / "child.yaml",
        """\
        extends: spec.yaml
        name: child
        corpus: {chunking: {max_words: 200}}
        generation: {seed: 7}
        matrix: {persona: [assistant]}
        """,
    )
    exp = load_spec(child)
    assert exp.spec.name == "child"
    assert exp.spec.generation.seed == 7
    assert exp.spec.generation.max_new_tokens == 100  # inherited next to an overridden sibling
    assert exp.spec.corpus.chunking.max_words == 200
    assert exp.spec.corpus.chunking.overlap_words == 10
    assert exp.spec.corpus.collection == "col-a"
    assert exp.spec.matrix.persona == ["assistant"]  # lists are replaced, not concatenated
    assert {c.persona for c in expand(exp)} == {"assistant"}


def test_extends_chain_resolves_paths_against_each_file(project: Path) -> None:
    write(
        project / "a" / "b" / "mid.yaml",
        """\
        extends: ../../specs/spec.yaml
        name: mid
        templates: {t3: ../../templates/t2.j2}
        generation: {max_new_tokens: 50}
        """,
    )
    child = write(
        project / "c" / "child.yaml",
        """\
        extends: ../a/b/mid.yaml
        name: child
        corpus: {path: ../data/corpus}
        generation: {seed: 9}
        """,
    )
    exp = load_spec(child)
    templates = project / "templates"
    assert exp.spec.templates == {
        "t1": (templates / "t1.j2").resolve(),
        "t2": (templates / "t2.j2").resolve(),
        "t3": (templates / "t2.j2").resolve(),
    }
    assert exp.spec.corpus.path == (project / "data" / "corpus").resolve()
    assert (exp.spec.generation.max_new_tokens, exp.spec.generation.seed) == (50, 9)
    spec_files = {p for p in exp.sources if p.suffix == ".yaml" and p.parent.name != "data"}
    assert spec_files == {
        child.resolve(),
        (project / "a/b/mid.yaml").resolve(),
        (project / "specs/spec.yaml").resolve(),
    }


def test_error_in_an_inherited_value_points_at_the_base(project: Path) -> None:
    write(project / "specs" / "base_bad.yaml", "extends: spec.yaml\ngeneration:\n  top_p: 2.0\n")
    child = write(project / "specs" / "child.yaml", "extends: base_bad.yaml\nname: child\n")
    with pytest.raises(SpecError) as err:
        load_spec(child)
    [problem] = err.value.problems
    assert problem.file.endswith("base_bad.yaml") and problem.line == 3
    assert problem.path == "generation.top_p"


# --- --set


def test_set_values_are_parsed_as_yaml(project: Path) -> None:
    exp = load_spec(
        project / "specs" / "spec.yaml",
        [
            "generation.max_new_tokens=64",
            "generation.temperature=0.5",
            "models.tiny.load_in_4bit=true",
            "personas.extra=Hello there, reader",
            "matrix.persona=[professor, extra]",
            "matrix.k=[[10, 5, 2], [9, 4, 1]]",
            "matrix.k.1=[8, 4, 2]",
        ],
    )
    g = exp.spec.generation
    assert (g.max_new_tokens, g.temperature) == (64, 0.5)
    assert exp.spec.models["tiny"].load_in_4bit is True
    assert exp.spec.personas["extra"] == "Hello there, reader"
    cells = expand(exp)
    assert {c.persona for c in cells} == {"professor", "extra"}
    assert {c.k for c in cells} == {(10, 5, 2), (8, 4, 2)}


def test_set_restricts_an_axis_and_later_sets_win(project: Path) -> None:
    spec = project / "specs" / "spec.yaml"
    everything = expand(load_spec(spec))
    exp = load_spec(spec, ["matrix.persona=[assistant]", "matrix.persona=[professor]"])
    cells = expand(exp)
    assert {c.persona for c in cells} == {"professor"}
    assert axes_of(cells) == {a for a in axes_of(everything) if a[2] == "professor"}


def test_set_creates_missing_sections(project: Path) -> None:
    exp = load_spec(project / "specs" / "spec.yaml", ["reranker.provider=cohere", "reranker.model=embed-v3"])
    assert exp.spec.reranker is not None
    assert (exp.spec.reranker.provider, exp.spec.reranker.model) == ("cohere", "embed-v3")


def test_set_paths_are_relative_to_the_working_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "templates")
    exp = load_spec(
        project / "specs" / "spec.yaml",
        ["templates.t3=t2.j2", "corpus={path: ../data/corpus, collection: c-b}"],
    )
    assert exp.spec.templates["t3"] == (project / "templates" / "t2.j2").resolve()
    assert exp.spec.corpus.path == (project / "data" / "corpus").resolve()


# --- matrix selection


def test_question_all_follows_the_file_and_a_list_selects(project: Path) -> None:
    spec = project / "specs" / "spec.yaml"
    exp = load_spec(spec)
    assert list(exp.questions) == ["q1", "q2", "q3"]
    assert {c.question for c in expand(exp)} == {"q1", "q2", "q3"}
    picked = expand(load_spec(spec, ["matrix.question=[q3, q1]"]))
    assert {c.question for c in picked} == {"q1", "q3"}
    assert len(picked) == len(expand(exp)) * 2 // 3


def test_exclude_matches_partially(project: Path) -> None:
    spec = project / "specs" / "spec.yaml"
    full = axes_of(expand(load_spec(spec)))
    one_axis = axes_of(expand(load_spec(spec, ["matrix.exclude=[{persona: assistant}]"])))
    assert one_axis == {a for a in full if a[2] != "assistant"}
    two_axes = axes_of(expand(load_spec(spec, ["matrix.exclude=[{persona: assistant, pov_set: beta}]"])))
    assert two_axes == {a for a in full if not (a[2] == "assistant" and a[3] == "beta")}
    listed = axes_of(expand(load_spec(spec, ["matrix.exclude=[{question: [q1, q2], template: t2}]"])))
    assert listed == {a for a in full if not (a[5] in ("q1", "q2") and a[1] == "t2")}
    by_k = axes_of(
        expand(
            load_spec(
                spec,
                ["matrix.k=[[15, 10, 5], [9, 6, 3]]", "matrix.exclude=[{k: [9, 6, 3], persona: professor}]"],
            )
        )
    )
    assert {a[4] for a in by_k if a[2] == "professor"} == {(15, 10, 5)}
    assert {a[4] for a in by_k if a[2] == "assistant"} == {(15, 10, 5), (9, 6, 3)}


def test_include_adds_cells_outside_the_matrix(project: Path) -> None:
    spec = project / "specs" / "spec.yaml"
    base = ["matrix.persona=[professor]", "matrix.template=[t1]"]
    plain = axes_of(expand(load_spec(spec, base)))
    rule = "{model: tiny, template: t2, persona: assistant, pov_set: [alpha, beta], k: [5, 3, 1]}"
    more = axes_of(expand(load_spec(spec, [*base, f"matrix.include=[{rule}]"])))
    added = {
        ("tiny", "t2", "assistant", p, (5, 3, 1), q) for p in ("alpha", "beta") for q in ("q1", "q2", "q3")
    }
    assert more == plain | added
    one_q = axes_of(
        expand(
            load_spec(
                spec,
                [
                    *base,
                    "matrix.include=[{model: tiny, template: t2, persona: all, "
                    "pov_set: beta, k: [5, 3, 1], question: q2}]",
                ],
            )
        )
    )
    assert one_q == plain | {("tiny", "t2", p, "beta", (5, 3, 1), "q2") for p in ("professor", "assistant")}


def test_include_of_an_existing_cell_adds_nothing(project: Path) -> None:
    spec = project / "specs" / "spec.yaml"
    plain = expand(load_spec(spec))
    rule = "{model: tiny, template: t1, persona: professor, pov_set: alpha, k: [15, 10, 5]}"
    again = expand(load_spec(spec, [f"matrix.include=[{rule}]"]))
    assert [c.id for c in again] == [c.id for c in plain]


# --- the experiment


def test_experiment_reads_every_named_file(project: Path) -> None:
    exp = load_spec(project / "specs" / "spec.yaml")
    assert exp.pov_sets["alpha"] == ["Alpha one.", "Alpha two."]  # stripped, blanks dropped
    assert exp.questions["q2"].text == "Second?"
    assert exp.templates["t2"].text == (project / "templates" / "t2.j2").read_text()
    assert exp.root == project.resolve()
    assert exp.state_dir == project.resolve() / ".pov"


def test_spec_hash_follows_content_not_commentary(project: Path) -> None:
    spec = project / "specs" / "spec.yaml"
    h = load_spec(spec).spec_hash
    assert load_spec(spec).spec_hash == h
    assert load_spec(spec, ["description=just words"]).spec_hash == h
    assert load_spec(spec, ["generation.seed=4"]).spec_hash != h
    (project / "templates" / "t2.j2").write_text("{{ persona }} {{ question }}\n")
    assert load_spec(spec).spec_hash != h


# --- template headers and rendering


def test_template_header_is_parsed() -> None:
    info = parse_header("t1", Path("t1.j2"), TEMPLATE, "t1.j2")
    assert info.sections == (Section("Summary", (30, 60), True), Section("Opinion", (20, 40), False))
    assert info.instructions == 3
    assert info.header_line == 2


def test_template_without_header_declares_nothing() -> None:
    info = parse_header("t", Path("t.j2"), "{{ persona }}\n{# pov is mentioned here #}\n", "t.j2")
    assert info.sections == () and info.instructions is None


def test_template_header_errors_carry_the_template_line() -> None:
    text = "{#- pov:\nsections:\n  - {title: A}\n  - {title: B, heading: 'no'}\ninstructions: true\n-#}\nx\n"
    with pytest.raises(SpecError) as err:
        parse_header("t", Path("t.j2"), text, "t.j2")
    where = {(p.line, p.path) for p in err.value.problems}
    assert (4, "header.sections.1.heading") in where
    assert (5, "header.instructions") in where


def test_render_in_the_sandbox() -> None:
    info = TemplateInfo("t1", Path("t1.j2"), TEMPLATE)
    template = compile_template(info, "t1.j2")
    chunks = [
        {"id": "c1", "text": "Chunk one.", "score": 0.9, "rank": 1},
        {"id": "c2", "text": "Two.", "score": 0.5, "rank": 2},
    ]
    out = render(template, {"persona": "PERSONA", "question": "QUESTION?", "chunks": chunks})
    assert out.startswith("PERSONA\nQ: QUESTION?\n")  # the header comment and its newline are gone
    assert "[1] Chunk one.\n[2] Two.\n" in out


def test_render_keeps_the_final_newline() -> None:
    template = compile_template(TemplateInfo("t", Path("t.j2"), "{{ persona }}\n"), "t.j2")
    assert render(template, {"persona": "P"}) == "P\n"


def test_render_refuses_undefined_variables() -> None:
    template = compile_template(TemplateInfo("t", Path("t.j2"), "{{ persona }} {{ nope }}"), "t.j2")
    with pytest.raises(UndefinedError):
        render(template, {"persona": "P"})


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ 'x' * 5000000 }}",
        "{{ 7 ** 100000 }}",
    ],
)
def test_sandbox_refuses_unsafe_templates(text: str) -> None:
    info = TemplateInfo("t", Path("t.j2"), text)
    with pytest.raises(SecurityError):
        render(compile_template(info, "t.j2"), {"persona": "P"})
    with pytest.raises(SpecError, match="unsafe operation"):
        check_renders(info, "t.j2")


def test_sandbox_allows_modest_arithmetic() -> None:
    template = compile_template(
        TemplateInfo("t", Path("t.j2"), "{{ '-' * 3 }}{{ 2 ** 10 }}{{ [0] * 2 }}"), "t.j2"
    )
    assert render(template, {}) == "---1024[0, 0]"


# --- the YAML loader


def test_merge_keys_let_explicit_keys_win() -> None:
    text = "a: &a {x: 1, y: 2}\nb: &b {x: 3, z: 4}\nc:\n  <<: [*a, *b]\n  y: 9\n"
    assert parse_yaml(text, "f.yaml").data["c"] == {"x": 1, "y": 9, "z": 4}


def test_duplicate_key_names_both_lines() -> None:
    with pytest.raises(SpecError) as err:
        parse_yaml("top:\n  a: 1\n  b: 2\n  a: 3\n", "f.yaml")
    [p] = err.value.problems
    assert (p.line, p.path) == (4, "top.a") and "line 2" in p.message


def test_marks_locate_nested_values() -> None:
    loaded = parse_yaml("top:\n  list:\n    - x\n    - {k: v}\n", "f.yaml")
    assert (loaded.marks[("top", "list", 1, "k")].line, loaded.marks[("top", "list", 1, "k")].col) == (4, 8)


def test_tab_inside_a_block_scalar_is_content() -> None:
    assert parse_yaml("a: |\n  x\n  \ty\n", "f.yaml").data == {"a": "x\n\ty\n"}


def test_byte_order_mark_is_accepted() -> None:
    assert parse_yaml("\ufeffa: 1\n", "f.yaml").data == {"a": 1}


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object:os.Foo {x: 1}\n",
        "a: !!python/object/apply:os.system [ls]\n",
        "a: !!python/tuple [1, 2]\n",
        "a: !!set {x, y}\n",
        "a: !custom {x: 1}\n",
        "a: !!python/name:os.system\n",
    ],
)
def test_tags_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="only plain YAML"):
        parse_yaml(text, "f.yaml")


def test_plain_core_tags_are_accepted() -> None:
    assert parse_yaml("a: !!map {x: !!str 1}\nb: !!seq [!!int '2']\n", "f.yaml").data == {
        "a": {"x": "1"},
        "b": [2],
    }


def test_merge_key_bomb_is_refused() -> None:
    # Each level merges the previous one twice; PyYAML's own flattening would grow 2**40 entries.
    lines = ["l0: &l0 {x: 1}"]
    lines += [f"l{i}: &l{i}\n  a: {{<<: *l{i - 1}}}\n  b: {{<<: *l{i - 1}}}" for i in range(1, 41)]
    with pytest.raises(SpecError, match="alias bomb"):
        parse_yaml("\n".join(lines) + "\n", "f.yaml")


def test_nesting_too_deep_for_the_parser_is_refused() -> None:
    text = "".join(" " * i + f"k{i}:\n" for i in range(1500)) + " " * 1500 + "k: 1\n"
    with pytest.raises(SpecError, match="nested too deeply"):
        parse_yaml(text, "f.yaml")


LIBYAML_CASES = {
    "unicode": "naïve: «quoted» — ok\nkey: [αβγ, {δ: ε}]\n日本: 東京\n",
    "crlf": "a: 1\r\nb:\r\n  - x\r\n  - {y: 2}\r\n",
    "flow over lines": "m: {a: 1,\n    b: [1, 2,\n        3], c: 'x\n  y'}\n",
    "block scalars": "lit: |\n  one\n   two\nfold: >-\n  a\n  b\nafter: z\n",
    "anchors and merges": "base: &b {x: 1, y: [1, 2]}\nc:\n  <<: *b\n  y: 3\nd: *b\n",
    "comments and end": "# c\na: 1 # trailing\n# another\nb: ~\n...\n",
    "scalars": "i: 0x1F\nf: 1.5e3\nb: yes\nd: 2024-01-02\ns: '07'\nn: null\nk: [15, 10, 5]\n",
    "long lines": "q: " + "word " * 3000 + "\nr: 1\n",
}


def _repository_yaml() -> list[Path]:
    root = Path(__file__).resolve().parent.parent
    return sorted(
        [
            *root.glob("experiments/*.yaml"),
            *root.glob("data/**/*.yaml"),
            *root.glob("tests/bad_specs/**/*.yaml"),
        ]
    )


@pytest.mark.skipif(safe_yaml.FAST_LOADER is None, reason="PyYAML built without libyaml")
def test_libyaml_composes_the_same_data_and_marks_as_the_pure_python_loader() -> None:
    texts = dict(LIBYAML_CASES)
    for path in _repository_yaml():
        try:
            texts[path.name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # the non-UTF-8 bad spec: read_text refuses it before any loader
    compared = 0
    for name, text in texts.items():
        try:
            slow = safe_yaml._parse(text, "f.yaml", yaml.SafeLoader)
        except SpecError:
            continue  # errors are always the pure-Python loader's: see the next test
        fast = safe_yaml._parse(text, "f.yaml", safe_yaml.FAST_LOADER)
        assert fast.data == slow.data, name
        assert fast.marks == slow.marks, name
        compared += 1
    assert compared >= len(LIBYAML_CASES) + 5


@pytest.mark.skipif(safe_yaml.FAST_LOADER is None, reason="PyYAML built without libyaml")
def test_parse_yaml_composes_with_libyaml_and_words_errors_as_the_pure_python_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used: list[str] = []
    real = safe_yaml._parse

    def spy(text: str, file: str, loader_class: type) -> Any:
        used.append(loader_class.__name__)
        return real(text, file, loader_class)

    monkeypatch.setattr(safe_yaml, "_parse", spy)
    assert parse_yaml("a: [1, 2]\n", "f.yaml").data == {"a": [1, 2]}
    assert used == ["CSafeLoader"]
    used.clear()
    with pytest.raises(SpecError) as err:
        parse_yaml("a: {b: 1\nc: 2\n", "f.yaml")
    assert used == ["CSafeLoader", "SafeLoader"]
    [p] = err.value.problems
    with pytest.raises(SpecError) as pure:
        real("a: {b: 1\nc: 2\n", "f.yaml", yaml.SafeLoader)
    assert (p.line, p.col, p.message) == (
        pure.value.problems[0].line,
        pure.value.problems[0].col,
        pure.value.problems[0].message,
    )


def test_editing_a_template_file_re_ids_only_its_cells(project: Path) -> None:
    spec = project / "specs" / "spec.yaml"
    before = {(c.template, c.persona, c.pov_set, c.question): c.id for c in expand(load_spec(spec))}
    with (project / "templates" / "t2.j2").open("a") as f:
        f.write("Answer briefly.\n")
    after = {(c.template, c.persona, c.pov_set, c.question): c.id for c in expand(load_spec(spec))}
    assert after.keys() == before.keys()
    assert {k for k in before if after[k] != before[k]} == {k for k in before if k[0] == "t2"}


def test_where_the_chroma_store_lives_is_not_part_of_the_spec_hash(project: Path, tmp_path: Path) -> None:
    """corpus.chroma_url and corpus.persist_dir say where the chunks are kept, not what the experiment is:
    moving the store keeps the execution (and every cell id); a spec that sets neither keeps its old hash."""
    old = copy_brics_project(tmp_path / "old") / "experiments" / "old_quickstart.yaml"
    old.write_text(OLD_QUICKSTART)
    assert load_spec(old).spec_hash == OLD_QUICKSTART_HASH  # existing executions still resume
    spec = project / "specs" / "spec.yaml"
    plain = load_spec(spec)
    moved = [
        load_spec(spec, ["corpus.chroma_url=http://127.0.0.1:8000"]),
        load_spec(spec, ["corpus.chroma_url=https://chroma.example.org:443"]),
        load_spec(spec, [f"corpus.persist_dir={project / 'elsewhere'}"]),
    ]
    assert {exp.spec_hash for exp in moved} == {plain.spec_hash}
    assert all([c.id for c in expand(exp)] == [c.id for c in expand(plain)] for exp in moved)
    assert load_spec(spec, ["corpus.collection=col-b"]).spec_hash != plain.spec_hash


OLD_QUICKSTART_CELLS = [
    "1b843522e701",
    "29e43174af02",
    "34c8ca5a0f86",
    "3720b3fca966",
    "387b7211b0d0",
    "52c9e1a9b78f",
    "541a5db3dec8",
    "64191cc94104",
    "6dc4952864fa",
    "6ffe163c7bff",
    "818c2098e23c",
    "9b9b550b48fe",
    "b1512fe9a779",
    "baacbaf7a582",
    "e6405397b57d",
    "e6560ed613b1",
    "f2ca540ac6ae",
    "fd0503900f4d",
]
"""The cell ids of OLD_QUICKSTART, computed by the runner before models had the openai fields (fa6c5ed)."""


def test_the_openai_model_fields_change_no_existing_hash_or_cell_id(project: Path, tmp_path: Path) -> None:
    """base_url, api_key_env, max_concurrency, request_timeout_s and server are new fields of every model:
    left at their defaults they change neither the spec hash nor a cell id (executions keep resuming); set,
    they make another model, so another hash and other cells."""
    old = copy_brics_project(tmp_path / "old") / "experiments" / "old_quickstart.yaml"
    old.write_text(OLD_QUICKSTART)
    exp = load_spec(old)
    assert exp.spec_hash == OLD_QUICKSTART_HASH
    assert sorted(c.id for c in expand(exp)) == OLD_QUICKSTART_CELLS
    served = load_spec(
        old,
        [
            "models.tiny.backend=openai",
            "models.tiny.name=smollm2",
            "models.tiny.device=auto",
            "models.tiny.base_url=http://127.0.0.1:8080/v1",
        ],
    )
    assert served.spec_hash != OLD_QUICKSTART_HASH
    assert not {c.id for c in expand(served)} & set(OLD_QUICKSTART_CELLS)
    wider = load_spec(
        old,
        [f"models.tiny.{k}" for k in ("backend=openai", "name=smollm2")]
        + ["models.tiny.base_url=http://127.0.0.1:8080/v1", "models.tiny.max_concurrency=16"],
    )
    assert wider.spec_hash not in (served.spec_hash, OLD_QUICKSTART_HASH)
