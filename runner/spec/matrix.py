"""Expand an experiment into cells: model x template x persona x POV set x k schedule x question, with
paired axes (`matrix.zip`, runner.spec.paired) and repeats (`matrix.repeat`)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from runner.spec.experiment import Experiment, model_identity, portable, without_new_defaults
from runner.spec.paired import paired_combos
from runner.spec.schema import AXES


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
        want: Any = rule.get(axis, "all" if axis == "question" else None)
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
        self._shared = _digest(
            {
                # Fields added later count only when set: ids from before them must not change.
                "generation": without_new_defaults("generation", spec.generation.model_dump(mode="json")),
                "embedder": spec.embedder.model_dump(mode="json", exclude={"batch_size", "device"}),
                "reranker": spec.effective_reranker.model_dump(mode="json", exclude={"batch_size", "device"}),
                "collection": spec.corpus.collection,
                "chunking": spec.corpus.chunking.model_dump(mode="json"),
            }
        )
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

    def cell(self, combo: dict[str, Any]) -> Cell:
        content = [self._shared]
        for axis in AXES:
            value = combo[axis]
            content.append(f"{axis}={value if axis != 'k' else list(value)}")
            if axis != "k":
                content.append(self._parts[axis][value])
        cid = hashlib.sha256("\n".join(map(str, content)).encode()).hexdigest()[:12]
        return Cell(
            cid,
            combo["model"],
            combo["template"],
            combo["persona"],
            combo["pov_set"],
            tuple(combo["k"]),
            combo["question"],
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


def is_empty(exp: Experiment) -> bool:
    """True when the matrix has no cell (say, an exclude matches them all); stops at the first cell found."""
    return next(_combos(exp), None) is None


def counts(cells: list[Cell]) -> dict[str, dict[str, int]]:
    """How many cells take each value of each axis."""
    out: dict[str, dict[str, int]] = {a: {} for a in AXES}
    for c in cells:
        for axis, value in c.axes().items():
            key = "-".join(map(str, value)) if axis == "k" else value
            out[axis][key] = out[axis].get(key, 0) + 1
    return out
