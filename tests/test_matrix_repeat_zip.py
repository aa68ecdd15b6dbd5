"""Properties of `matrix.repeat` and `matrix.zip`, in the style of test_matrix_props (whose worlds, builder
and naive oracle they extend): zipped axes advance together; repeats multiply the cells and never move an
existing id."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_matrix_props import AXES, SETTINGS, World, build, key, oracle, worlds

from runner.spec import Cell, Experiment, expand, repeat_seed

BASE = Path(__file__).parent / "bad_specs" / "fixtures" / "base.yaml"
"""A valid spec with two questions (q1, q2), two POV sets, two personas, one template and one model."""


def with_matrix(exp: Experiment, **fields: Any) -> Experiment:
    """The experiment with its matrix changed (zip, repeat), as a spec that sets them would load."""
    spec = exp.spec.model_copy(update={"matrix": exp.spec.matrix.model_copy(update=fields)})
    return replace(exp, spec=spec)


def base_ids(cells: list[Cell]) -> dict[tuple[Any, ...], str]:
    return {key(c): c.id for c in cells if c.repeat == 0}


# ---- repeat


@SETTINGS
@given(worlds(), st.integers(1, 4))
def test_repeat_runs_every_cell_n_times(w: World, n: int) -> None:
    once = expand(build(w))
    cells = expand(with_matrix(build(w), repeat=n))
    assert len(cells) == n * len(once)
    assert len({c.id for c in cells}) == len(cells), "every repeat has its own id"
    by_id = {c.id: c for c in once}
    for c in cells:
        assert 0 <= c.repeat < n
        assert key(c) == key(by_id[c.base]), "a repeat runs the same cell content"
    assert sorted((c.base, c.repeat) for c in cells) == sorted((c.id, r) for c in once for r in range(n)), (
        "each cell exactly once per repeat index"
    )


@SETTINGS
@given(worlds(), st.integers(1, 4))
def test_adding_a_repeat_keeps_every_existing_id(w: World, n: int) -> None:
    plain = expand(build(w))
    before = {(c.base, c.repeat): c.id for c in expand(with_matrix(build(w), repeat=n))}
    after = {(c.base, c.repeat): c.id for c in expand(with_matrix(build(w), repeat=n + 1))}
    assert {k: after[k] for k in before} == before
    assert {c.id for c in plain} == {cid for (_, r), cid in before.items() if r == 0}, (
        "repeat 0 is the cell as it is without repeats"
    )
    # The documented derivation, computed here: sha256 of "<base id>\nrepeat=<r>", 12 hex digits.
    for (base, r), cid in after.items():
        if r:
            assert cid == hashlib.sha256(f"{base}\nrepeat={r}".encode()).hexdigest()[:12]


def test_a_repeats_seed_depends_on_the_spec_seed_and_the_repeat_index_only() -> None:
    assert repeat_seed(7, 0) == 7
    seeds = {repeat_seed(7, r) for r in range(1, 50)}
    assert len(seeds) == 49 and 7 not in seeds
    assert repeat_seed(8, 3) != repeat_seed(7, 3)
    assert repeat_seed(7, 3) == int(hashlib.sha256(b"7:repeat:3").hexdigest()[:8], 16)


# ---- zip


@st.composite
def zipped_worlds(draw: st.DrawFn) -> tuple[World, list[str]]:
    """A world and one zip group whose axes select the same number of values; no exclude rule names a
    zipped axis (the loader refuses that)."""
    w = draw(worlds())
    group = draw(st.lists(st.sampled_from(AXES), min_size=2, max_size=3, unique=True))
    size = min(len(w.values(a)) for a in group)
    selected = dict(w.selected)
    ks = list(w.ks)
    for axis in group:
        values = w.values(axis)
        if axis == "k":
            ks = ks[:size]
        else:
            selected[axis] = values[:size]
    zipped = replace(w, selected=selected, ks=ks)
    zipped.exclude = [rule for rule in w.exclude if not set(rule) & set(group)]
    return zipped, group


def zip_oracle(w: World, group: list[str]) -> set[tuple[Any, ...]]:
    """The product restricted to combinations whose zipped axes sit at the same position, minus excludes,
    plus includes: written out naively from the definition."""
    _, kept, included = oracle(w)
    position = {axis: {v: i for i, v in enumerate(w.values(axis))} for axis in group}
    paired = {c for c in kept if len({position[a][c[AXES.index(a)]] for a in group}) == 1}
    return paired | included


@SETTINGS
@given(zipped_worlds())
def test_zipped_axes_advance_together(wg: tuple[World, list[str]]) -> None:
    w, group = wg
    cells = expand(with_matrix(build(w), zip=[group]))
    assert {key(c) for c in cells} == zip_oracle(w, group)
    assert len({c.id for c in cells}) == len(cells)


@SETTINGS
@given(zipped_worlds())
def test_a_zipped_cell_has_the_id_it_has_in_the_product(wg: tuple[World, list[str]]) -> None:
    w, group = wg
    product = base_ids(expand(build(w)))
    for c in expand(with_matrix(build(w), zip=[group])):
        assert product[key(c)] == c.id


@SETTINGS
@given(zipped_worlds(), st.integers(1, 3))
def test_zip_and_repeat_combine(wg: tuple[World, list[str]], n: int) -> None:
    w, group = wg
    zipped = expand(with_matrix(build(w), zip=[group]))
    both = expand(with_matrix(build(w), zip=[group], repeat=n))
    assert len(both) == n * len(zipped)
    assert base_ids(both) == {key(c): c.id for c in zipped}


def test_two_zip_groups_pair_independently() -> None:
    w = World(
        declared={a: ["a", "b", "c"] for a in ("model", "template", "persona", "pov_set", "question")},
        selected={a: "all" for a in ("model", "template", "persona", "pov_set", "question")},
        ks=[(15, 10, 5)],
    )
    cells = expand(with_matrix(build(w), zip=[["question", "pov_set"], ["model", "template"]]))
    assert len(cells) == 3 * 3 * 3  # (model, template) pairs x personas x (question, pov_set) pairs
    assert {(c.model, c.template) for c in cells} == {("a", "a"), ("b", "b"), ("c", "c")}
    assert {(c.question, c.pov_set) for c in cells} == {("a", "a"), ("b", "b"), ("c", "c")}
    assert {c.persona for c in cells} == {"a", "b", "c"}


def test_pov_plan_lists_the_repeats_of_zipped_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from runner.cli import main as cli

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"extends: {BASE}\nname: zipped\n"
        "matrix: {question: [q1, q2], pov_set: [alpha, beta], zip: [[question, pov_set]], repeat: 2}\n"
    )
    assert cli(["validate", str(spec)]) == 0
    assert "ok (8 cells)" in capsys.readouterr().out  # 2 pairs x 2 personas x 2 repeats
    assert cli(["plan", str(spec), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["question"], r["pov_set"]) for r in rows} == {("q1", "alpha"), ("q2", "beta")}
    first = {r["id"]: r for r in rows if "repeat" not in r}
    again = [r for r in rows if r.get("repeat") == 1]
    assert len(first) == len(again) == 4
    assert {r["base"] for r in again} == set(first)
    assert all({**first[r["base"]], "id": r["id"], "repeat": 1, "base": r["base"]} == r for r in again)
