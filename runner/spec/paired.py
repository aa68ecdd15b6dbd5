"""Paired axes (`matrix.zip`): axes that advance together instead of as a product.

`zip: [[question, pov_set]]` gives each question the POV set at the same position; the other axes still
multiply. Expansion walks one slot per free axis and one per zipped group, so a paired cell is exactly the
cell the full product would have made (same content, same id), only fewer of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from runner.spec.schema import AXES


def zipped_axes(groups: Sequence[Sequence[str]]) -> dict[str, int]:
    """Axis -> the index of the zip group that holds it."""
    return {axis: i for i, group in enumerate(groups) for axis in group}


def paired_combos(
    groups: Sequence[Sequence[str]], values: Callable[[str], list[Any]]
) -> Iterator[dict[str, Any]]:
    """Every combination of axis values (`values(axis)`): the product over the free axes and, per zip group,
    its values taken position by position. Groups of unequal length stop at the shortest (the loader refuses
    them first: `zip_problems`)."""
    grouped = zipped_axes(groups)
    slots: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
    done: set[int] = set()
    for axis in AXES:
        if axis not in grouped:
            slots.append(((axis,), [(v,) for v in values(axis)]))
        elif grouped[axis] not in done:
            done.add(grouped[axis])
            members = tuple(groups[grouped[axis]])
            slots.append((members, list(zip(*(values(a) for a in members), strict=False))))
    names = [name for members, _ in slots for name in members]
    if names == list(AXES):  # no zip, or zipped axes that are neighbours: values come in AXES order
        for picked in itertools.product(*(options for _, options in slots)):
            yield dict(zip(AXES, itertools.chain.from_iterable(picked), strict=True))
        return
    for picked in itertools.product(*(options for _, options in slots)):
        combo = dict(zip(names, itertools.chain.from_iterable(picked), strict=True))
        yield {axis: combo[axis] for axis in AXES}


def zip_problems(
    groups: Sequence[Sequence[str]], lengths: Callable[[str], int], excluded: Sequence[set[str]]
) -> list[tuple[tuple[Any, ...], str]]:
    """(path under `matrix`, message) for each mistake in `zip`: an unknown axis, an axis in two groups or
    twice in one, a group of one axis, groups whose axes list different numbers of values, and an `exclude`
    rule (given as the set of axes it names) that names a zipped axis."""
    out: list[tuple[tuple[Any, ...], str]] = []
    seen: dict[str, int] = {}
    for i, group in enumerate(groups):
        if len(group) < 2:
            out.append((("zip", i), "a zip group pairs two or more axes, e.g. [question, pov_set]"))
        for axis in group:
            if axis not in AXES:
                out.append((("zip", i), f"unknown axis {axis!r} (axes: {', '.join(AXES)})"))
            elif axis in seen:
                where = "twice in this group" if seen[axis] == i else f"also in zip group {seen[axis]}"
                out.append((("zip", i), f"axis {axis!r} is listed {where}: an axis is zipped once"))
            else:
                seen[axis] = i
        known = [a for a in dict.fromkeys(group) if a in AXES]
        sizes = {a: lengths(a) for a in known}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{a} has {n}" for a, n in sizes.items())
            out.append(
                (
                    ("zip", i),
                    f"zipped axes advance together and need as many values each: {listed}",
                )
            )
    for j, named in enumerate(excluded):
        for axis in sorted(named & set(seen)):
            out.append(
                (
                    ("exclude", j, axis),
                    f"axis {axis!r} is zipped (matrix.zip) and cannot also be excluded: leave its pair out "
                    "of the zipped lists instead",
                )
            )
    return out
