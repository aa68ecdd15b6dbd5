"""The stage-3 scoring method in the spec: `pov_scores` declares named methods, `matrix.pov_score` crosses them
with the other axes, and cell ids and spec hashes of specs that do not use it stay as they were."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.spec import expand, load_spec

REPO = Path(__file__).resolve().parent.parent
TINY_CELLS = (18, ["f2ca540ac6ae", "64191cc94104", "e6560ed613b1"])
"""Count and first ids of the tiny-model quickstart's cells (experiments/tiny.yaml, the quickstart until the
real model replaced it), computed before the scoring method became an axis."""
SEED_REPLICA_LAST = ["3f0ef146e745", "a93430a2c989"]


def test_cell_ids_of_specs_without_a_choice_have_not_moved() -> None:
    cells = expand(load_spec(REPO / "experiments" / "tiny.yaml"))
    assert (len(cells), [c.id for c in cells[:3]]) == TINY_CELLS
    assert [c.id for c in expand(load_spec(REPO / "experiments" / "seed_replica.yaml"))][
        -2:
    ] == SEED_REPLICA_LAST
    assert {c.pov_score for c in cells} == {"l2"}


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.md").write_text("Some text in a file.\n")
    (tmp_path / "t.j2").write_text("{{ persona }} {{ question }} {{ context }}\n")
    path = tmp_path / "spec.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: s
            corpus: {path: corpus, collection: col-a}
            questions: [{id: q1, text: "First?"}, {id: q2, text: "Second?"}]
            pov_sets:
              alpha: [Alpha one., Alpha two.]
              beta: [Beta one.]
            personas: {p: You are p.}
            templates: {t: t.j2}
            models: {tiny: {name: "builtin:tiny-llama"}}
            """
        )
    )
    return path


METHODS = [
    "pov_scores={l2: l2, blend: {method: blend, weight: 0.3}, stance: contrast}",
    "matrix.pov_score=all",
]


def test_the_axis_crosses_methods_and_l2_cells_keep_their_ids(spec: Path) -> None:
    plain = {(c.question, c.pov_set): c.id for c in expand(load_spec(spec))}
    cells = expand(load_spec(spec, METHODS))
    assert len(cells) == 3 * len(plain)
    by_method: dict[str, dict[tuple[str, str], str]] = {}
    for c in cells:
        by_method.setdefault(c.pov_score, {})[(c.question, c.pov_set)] = c.id
        assert c.axes()["pov_score"] == c.pov_score
    assert by_method["l2"] == plain
    assert len({*by_method["blend"].values(), *by_method["stance"].values(), *plain.values()}) == len(cells)


def test_what_a_method_scores_with_is_in_its_ids(spec: Path) -> None:
    def ids(*extra: str) -> dict[tuple[str, str, str], str]:
        return {
            (c.question, c.pov_set, c.pov_score): c.id for c in expand(load_spec(spec, [*METHODS, *extra]))
        }

    base = ids()
    heavier = ids("pov_scores.blend.weight=0.7")
    assert {k for k in base if base[k] != heavier[k]} == {k for k in base if k[2] == "blend"}
    # Contrast scores alpha against beta: editing beta's statements changes alpha's contrast cells too.
    edited = ids("pov_sets.beta=[Beta one., Beta three.]")
    changed = {k for k in base if base[k] != edited[k]}
    assert ("q1", "alpha", "stance") in changed and ("q1", "alpha", "l2") not in changed
    assert ("q1", "alpha", "blend") not in changed


def test_spec_hash_ignores_the_default_written_out(spec: Path) -> None:
    h = load_spec(spec).spec_hash
    assert load_spec(spec, ["pov_scores={l2: l2}", "matrix.pov_score=all"]).spec_hash == h
    assert load_spec(spec, ["pov_scores={l2: l2, b: blend}"]).spec_hash != h


def test_an_include_without_pov_score_takes_every_method(spec: Path) -> None:
    exp = load_spec(
        spec,
        [
            *METHODS,
            "matrix.pov_set=[alpha]",
            "matrix.include=[{model: tiny, template: t, persona: p, pov_set: beta, k: [9, 6, 3]}]",
        ],
    )
    included = [c for c in expand(exp) if c.k == (9, 6, 3)]
    assert {c.pov_score for c in included} == {"l2", "blend", "stance"} and {c.pov_set for c in included} == {
        "beta"
    }


def test_contrast_reference_may_name_a_neutral_set_outside_the_matrix(spec: Path) -> None:
    exp = load_spec(
        spec,
        [
            "pov_sets.neutral=[A plain statement.]",
            "pov_scores={stance: {method: contrast, reference: [neutral]}}",
            "matrix.pov_set=[alpha]",
        ],
    )
    assert {(c.pov_set, c.pov_score) for c in expand(exp)} == {("alpha", "stance")}


def test_a_rerank_model_is_in_every_cell_id(spec: Path) -> None:
    plain = [c.id for c in expand(load_spec(spec))]
    cohere = [
        c.id for c in expand(load_spec(spec, ["query_reranker={provider: cohere, model: rerank-v3.5}"]))
    ]
    newer = [c.id for c in expand(load_spec(spec, ["query_reranker={provider: cohere, model: rerank-v4.0}"]))]
    batched = expand(
        load_spec(spec, ["query_reranker={provider: cohere, model: rerank-v3.5, batch_size: 5}"])
    )
    assert len({*plain, *cohere, *newer}) == 3 * len(plain)  # scores of another model are another experiment
    assert [c.id for c in batched] == cohere  # how it is called is not


def test_the_stored_spec_loads_back_with_its_methods(spec: Path, tmp_path: Path) -> None:
    """What an execution stores for `pov rerun` writes every field out, parameters of other methods included."""
    from runner.spec import snapshot_files

    exp = load_spec(spec, METHODS)
    stored = tmp_path / "stored"
    for rel, text in snapshot_files(exp).items():
        (stored / rel).parent.mkdir(parents=True, exist_ok=True)
        (stored / rel).write_text(text)
    again = load_spec(stored / "spec.yaml")
    assert again.spec.pov_scores == exp.spec.pov_scores
    assert [c.id for c in expand(again)] == [c.id for c in expand(exp)]
