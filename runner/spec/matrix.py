"""Expand an experiment into cells: model x template x persona x POV set x k schedule x question, with
paired axes (`matrix.zip`, runner.spec.paired) and repeats (`matrix.repeat`)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from runner.spec.experiment import (
    Experiment,
    chunking_identity,
    model_identity,
    portable,
    without_new_defaults,
)
from runner.spec.paired import paired_combos
from runner.spec.retrieval_schema import DEFAULT_POV_SCORE
from runner.spec.schema import AXES

OPTIONAL_IN_INCLUDE = ("question", "pov_score")
"""Axes a `matrix.include` rule may leave out: it then takes every value (`all`)."""


@dataclass(frozen=True)
class Cell:
    """One prompt to run: a value on every axis, and an id that hashes their content."""

    id: str
    model: str
    template: str
    persona: str
    pov_set: str
    k: tuple[int, int, int]
    question: str
    pov_score: str = DEFAULT_POV_SCORE
    """Name of the stage-3 scoring method (a key of the spec's `pov_scores`)."""
    repeat: int = 0
    """Which run of the cell this is (`matrix.repeat`); 0 is the cell as it is without repeats."""
    base_id: str = ""
    """The id of repeat 0 of this cell; empty on repeat 0 itself (`base` reads either)."""

    @property
    def base(self) -> str:
        """The id shared by every repeat of this cell: repeat 0's."""
        return self.base_id or self.id

    def axes(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "template": self.template,
            "persona": self.persona,
            "pov_set": self.pov_set,
            "pov_score": self.pov_score,
            "k": list(self.k),
            "question": self.question,
        }

    @property
    def k_label(self) -> str:
        return "-".join(map(str, self.k))


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat `repeat` (`generation.seed` for repeat 0). Shared by every cell of that repeat: a
    backend seeds a batch, not a row, so one seed per repeat lets repeat r run the batches repeat 0 ran."""
    if repeat == 0:
        return seed
    return int(hashlib.sha256(f"{seed}:repeat:{repeat}".encode()).hexdigest()[:8], 16)


def repeat_id(base_id: str, repeat: int) -> str:
    """Repeat r > 0 of a cell: a hash of the cell's id and r, so adding repeats keeps every existing id."""
    return hashlib.sha256(f"{base_id}\nrepeat={repeat}".encode()).hexdigest()[:12]


def _values(exp: Experiment, axis: str) -> list[Any]:
    chosen = getattr(exp.spec.matrix, axis)
    if axis == "k":
        return [tuple(k) for k in chosen]
    if chosen == "all":
        return list(exp.questions) if axis == "question" else list(getattr(exp.spec, axis + "s"))
    return list(chosen)


def matches(rule: dict[str, Any], combo: dict[str, Any]) -> bool:
    """True when `combo` has every axis value `rule` names (a list names alternatives), as in `matrix.exclude`."""
    for axis, want in rule.items():
        have = combo[axis]
        if axis == "k":
            wants = [tuple(w) for w in want] if want and isinstance(want[0], list) else [tuple(want)]
            if have not in wants:
                return False
        elif isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def _include_combos(exp: Experiment, rule: dict[str, Any]) -> Iterator[dict[str, Any]]:
    options: list[list[Any]] = []
    for axis in AXES:
        want: Any = rule.get(axis, "all" if axis in OPTIONAL_IN_INCLUDE else None)
        vals: list[Any]
        if axis == "k":
            vals = [tuple(w) for w in want] if want and isinstance(want[0], list) else [tuple(want)]
        elif want == "all":
            vals = list(exp.questions) if axis == "question" else list(getattr(exp.spec, axis + "s"))
        else:
            vals = want if isinstance(want, list) else [want]
        options.append(vals)
    for combo in itertools.product(*options):
        yield dict(zip(AXES, combo, strict=True))


class CellHasher:
    """Cell ids hash the content a cell depends on (never its position), so adding a value to one axis
    keeps every existing id, and editing a template changes the ids of the cells that use it."""

    def __init__(self, exp: Experiment) -> None:
        spec = exp.spec
        shared = {
            # Fields added later count only when set: ids from before them must not change.
            "generation": without_new_defaults("generation", spec.generation.model_dump(mode="json")),
            "embedder": spec.embedder.model_dump(mode="json", exclude={"batch_size", "device"}),
            "reranker": spec.effective_reranker.model_dump(mode="json", exclude={"batch_size", "device"}),
            "collection": spec.corpus.collection,
            "chunking": chunking_identity(spec),
        }
        if spec.query_reranker is not None:  # only when set: the ids of cells without one stay as they were
            shared["query_reranker"] = portable(
                spec.query_reranker.model_dump(mode="json", exclude={"batch_size", "device"}), exp.root
            )
        self._shared = _digest(shared)
        self._parts = {
            "model": {
                k: _digest(portable(model_identity(m.model_dump(mode="json")), exp.root))
                for k, m in spec.models.items()
            },
            "template": {k: _digest(t.text) for k, t in exp.templates.items()},
            "persona": {k: _digest(v) for k, v in spec.personas.items()},
            "pov_set": {k: _digest(v) for k, v in exp.pov_sets.items()},
            "question": {k: _digest(q.text) for k, q in exp.questions.items()},
        }
        # The notebook's `l2` adds nothing to an id, so that the ids of every cell made before the choice
        # existed stay as they were. Other methods hash their parameters, and contrast its references'
        # statements (editing another POV set changes what it scores).
        self._pov_score = {
            name: None
            if score.method == DEFAULT_POV_SCORE
            else _digest(
                {
                    **score.model_dump(mode="json", exclude_unset=False),
                    "statements": exp.pov_sets if score.method == "contrast" else None,
                    "matrix_pov_sets": matrix_pov_sets(exp) if score.reference == "others" else None,
                }
            )
            for name, score in spec.pov_scores.items()
        }
        self._fragments: dict[tuple[str, Any], str] = {}

    def _fragment(self, axis: str, value: Any) -> str:
        """What `axis=value` adds to a cell's hashed content (a newline before each line of it)."""
        if axis == "pov_score":
            score = self._pov_score[value]
            return "" if score is None else f"\n{axis}={value}\n{score}"
        if axis == "k":
            return f"\n{axis}={list(value)}"
        return f"\n{axis}={value}\n{self._parts[axis][value]}"

    def cell(self, combo: dict[str, Any]) -> Cell:
        # The content is the lines shared, axis=value and the value's digest, joined by newlines; each axis
        # value's lines are made once per expansion (100,000 cells share a few dozen of them).
        text = self._shared
        for axis in AXES:
            value = combo[axis]
            key = (axis, tuple(value) if isinstance(value, list) else value)
            fragment = self._fragments.get(key)
            if fragment is None:
                fragment = self._fragments[key] = self._fragment(axis, value)
            text += fragment
        cid = hashlib.sha256(text.encode()).hexdigest()[:12]
        return Cell(
            cid,
            combo["model"],
            combo["template"],
            combo["persona"],
            combo["pov_set"],
            tuple(combo["k"]),
            combo["question"],
            combo["pov_score"],
        )


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def expand(exp: Experiment) -> list[Cell]:
    """Every cell of the experiment: the product (zipped axes paired) minus excludes, plus includes (each
    once); then, with `matrix.repeat` N, repeats 1..N-1 of every cell, repeat by repeat."""
    hasher = CellHasher(exp)
    cells: dict[str, Cell] = {}
    for combo in _combos(exp):
        cell = hasher.cell(combo)
        cells.setdefault(cell.id, cell)
    base = list(cells.values())
    repeats = [
        dataclasses.replace(c, id=repeat_id(c.id, r), repeat=r, base_id=c.id)
        for r in range(1, exp.spec.matrix.repeat)
        for c in base
    ]
    return base + repeats


def _combos(exp: Experiment) -> Iterator[dict[str, Any]]:
    """Axis values of every cell, lazily: the product minus excludes, then the includes (maybe repeated)."""
    m = exp.spec.matrix
    for combo in paired_combos(m.zip, lambda axis: _values(exp, axis)):
        if not any(matches(rule, combo) for rule in m.exclude):
            yield combo
    for rule in m.include:
        yield from _include_combos(exp, rule)


def matrix_pov_sets(exp: Experiment) -> list[str]:
    """The POV sets the matrix uses (matrix.pov_set and the includes'), in declaration order: what a
    contrast's `reference: others` and the stance metrics compare a set with."""
    m = exp.spec.matrix
    named = set(exp.pov_sets if m.pov_set == "all" else m.pov_set)
    for rule in m.include:
        want = rule.get("pov_set")
        if want == "all":
            named |= set(exp.pov_sets)
        elif isinstance(want, list):
            named |= {str(v) for v in want}
        elif want is not None:
            named.add(str(want))
    return [p for p in exp.pov_sets if p in named]


def is_empty(exp: Experiment) -> bool:
    """True when the matrix has no cell (say, an exclude matches them all); stops at the first cell found."""
    return next(_combos(exp), None) is None


def counts(cells: list[Cell]) -> dict[str, dict[str, int]]:
    """How many cells take each value of each axis."""
    out: dict[str, dict[str, int]] = {}
    for axis in AXES:
        seen = Counter(getattr(c, axis) for c in cells)
        out[axis] = {("-".join(map(str, v)) if axis == "k" else v): n for v, n in seen.items()}
    return out
