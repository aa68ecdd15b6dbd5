"""Properties of matrix expansion, on experiments built in memory (no files, so examples stay fast).

The expected cells come from a deliberately naive oracle: the full product as a set, minus every
combination an exclude rule matches, plus every combination an include rule names."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.spec import Cell, Experiment, Spec, TemplateInfo, expand

AXES = ("model", "template", "persona", "pov_set", "k", "question")
NAMED = ("model", "template", "persona", "pov_set", "question")
NAMES = ("a", "b", "c", "d")
K_CHOICES = ((15, 10, 5), (15, 10, 3), (10, 5, 1), (5, 5, 5))

SETTINGS = settings(max_examples=60, deadline=None)


@dataclass
class World:
    """What a spec declares, what its matrix selects, and its exclude/include rules."""

    declared: dict[str, list[str]]
    """Declared names per named axis, in declaration order."""
    selected: dict[str, Any]
    """Per named axis: "all" or a list of declared names."""
    ks: list[tuple[int, int, int]]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    texts: dict[str, dict[str, str]] = field(default_factory=dict)
    """Content per named axis and name (template text, persona text, ...)."""

    def content(self, axis: str, name: str) -> str:
        return self.texts.get(axis, {}).get(name, f"{axis} {name} text.")

    def values(self, axis: str) -> list[Any]:
        if axis == "k":
            return list(self.ks)
        sel = self.selected[axis]
        return list(self.declared[axis]) if sel == "all" else list(sel)


def build(w: World) -> Experiment:
    d = w.declared
    spec = Spec.model_validate(
        {
            "name": "props",
            "corpus": {"path": "/nonexistent/corpus", "collection": "props-col"},
            "questions": [{"id": q, "text": w.content("question", q)} for q in d["question"]],
            "pov_sets": {p: [w.content("pov_set", p)] for p in d["pov_set"]},
            "personas": {p: w.content("persona", p) for p in d["persona"]},
            "templates": {t: f"/nonexistent/{t}.j2" for t in d["template"]},
            "models": {m: {"name": w.content("model", m)} for m in d["model"]},
            "matrix": {
                **{axis: w.selected[axis] for axis in NAMED},
                "k": [list(k) for k in w.ks],
                "exclude": w.exclude,
                "include": w.include,
            },
        }
    )
    questions = {q.id: q for q in spec.questions} if isinstance(spec.questions, list) else {}
    templates = {
        t: TemplateInfo(t, Path(f"/nonexistent/{t}.j2"), w.content("template", t)) for t in d["template"]
    }
    pov_sets = {p: [w.content("pov_set", p)] for p in d["pov_set"]}
    return Experiment(
        spec, Path("/nonexistent/spec.yaml"), Path("/nonexistent"), questions, pov_sets, templates, {}
    )


def key(cell: Cell) -> tuple[Any, ...]:
    return (cell.model, cell.template, cell.persona, cell.pov_set, cell.k, cell.question)


def ids_by_combo(exp: Experiment) -> dict[tuple[Any, ...], str]:
    return {key(c): c.id for c in expand(exp)}


# --- the oracle


def _allowed(axis: str, value: Any, w: World) -> list[Any]:
    if axis == "k":
        return [tuple(v) for v in value] if isinstance(value[0], list) else [tuple(value)]
    if value == "all":
        return list(w.declared[axis])
    return list(value) if isinstance(value, list) else [value]


def oracle(w: World) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """(full product, cells left after excludes, cells named by includes)."""
    product = set(itertools.product(*(w.values(a) for a in AXES)))
    kept = {
        c
        for c in product
        if not any(all(c[AXES.index(a)] in _allowed(a, v, w) for a, v in rule.items()) for rule in w.exclude)
    }
    included: set[tuple[Any, ...]] = set()
    for rule in w.include:
        full = {**{"question": "all"}, **rule}
        included |= set(itertools.product(*(_allowed(a, full[a], w) for a in AXES)))
    return product, kept, included


# --- strategies


def _subset(draw: st.DrawFn, names: list[str]) -> list[str]:
    return draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))


def _rule_value(draw: st.DrawFn, axis: str, w: World) -> Any:
    if axis == "k":
        picked = _subset(draw, w.ks)  # type: ignore[arg-type]
        return list(picked[0]) if len(picked) == 1 and draw(st.booleans()) else [list(k) for k in picked]
    picked = _subset(draw, w.declared[axis])
    return picked[0] if len(picked) == 1 and draw(st.booleans()) else picked


@st.composite
def worlds(draw: st.DrawFn) -> World:
    declared = {axis: _subset(draw, list(NAMES[:3])) for axis in NAMED}
    selected: dict[str, Any] = {
        axis: "all" if draw(st.booleans()) else _subset(draw, declared[axis]) for axis in NAMED
    }
    ks = draw(st.lists(st.sampled_from(K_CHOICES), min_size=1, max_size=3, unique=True))
    w = World(declared, selected, ks)
    for _ in range(draw(st.integers(0, 3))):
        axes = draw(st.lists(st.sampled_from(AXES), min_size=1, max_size=3, unique=True))
        w.exclude.append({a: _rule_value(draw, a, w) for a in axes})
    for _ in range(draw(st.integers(0, 2))):
        rule = {a: _rule_value(draw, a, w) for a in AXES if a != "question"}
        if draw(st.booleans()):
            rule["question"] = _rule_value(draw, "question", w)
        w.include.append(rule)
    return w


# --- properties


@SETTINGS
@given(worlds())
def test_cells_are_the_product_minus_excluded_plus_included(w: World) -> None:
    cells = expand(build(w))
    product, kept, included = oracle(w)
    assert {key(c) for c in cells} == kept | included
    excluded = product - kept
    assert len(cells) == len(product) - len(excluded) + len(included - kept)


@SETTINGS
@given(worlds())
def test_ids_are_unique(w: World) -> None:
    cells = expand(build(w))
    assert len({c.id for c in cells}) == len(cells)


@SETTINGS
@given(worlds(), st.data())
def test_ids_do_not_depend_on_order(w: World, data: st.DataObject) -> None:
    before = ids_by_combo(build(w))
    shuffled = replace(
        w,
        declared={a: data.draw(st.permutations(v)) for a, v in w.declared.items()},
        selected={a: v if v == "all" else data.draw(st.permutations(v)) for a, v in w.selected.items()},
        ks=data.draw(st.permutations(w.ks)),
    )
    assert ids_by_combo(build(shuffled)) == before


@SETTINGS
@given(worlds(), st.sampled_from(AXES))
def test_adding_a_value_keeps_every_existing_id(w: World, axis: str) -> None:
    before = ids_by_combo(build(w))
    if axis == "k":
        grown = replace(w, ks=[*w.ks, (7, 6, 5)])
    else:
        declared = {**w.declared, axis: [*w.declared[axis], "z"]}
        sel = w.selected[axis]
        grown = replace(
            w, declared=declared, selected={**w.selected, axis: sel if sel == "all" else [*sel, "z"]}
        )
    after = ids_by_combo(build(grown))
    assert {c: after[c] for c in before} == before
    new_ids = {cid for c, cid in after.items() if c not in before}
    assert not new_ids & set(before.values())


@SETTINGS
@given(worlds(), st.sampled_from(NAMED), st.data())
def test_editing_content_changes_exactly_the_ids_that_use_it(
    w: World, axis: str, data: st.DataObject
) -> None:
    """Editing a template (or a persona, POV set, question) re-ids the cells using it and no others."""
    name = data.draw(st.sampled_from(w.declared[axis]))
    before = ids_by_combo(build(w))
    edited = replace(w, texts={**w.texts, axis: {name: w.content(axis, name) + " Edited."}})
    after = ids_by_combo(build(edited))
    assert set(after) == set(before)
    position = AXES.index(axis)
    changed = {c for c in before if after[c] != before[c]}
    assert changed == {c for c in before if c[position] == name}


@SETTINGS
@given(worlds())
def test_an_included_cell_has_the_id_it_would_have_in_the_product(w: World) -> None:
    plain = ids_by_combo(build(replace(w, exclude=[], include=[])))
    with_rules = ids_by_combo(build(w))
    for combo, cid in with_rules.items():
        if combo in plain:
            assert plain[combo] == cid
