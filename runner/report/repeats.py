"""Repeats (`matrix.repeat`) in the report: the rates elsewhere count every repeat as a cell; this shows the
spread across repeats: the crash rate of each repeat, and how many cells gave other answers (or another
outcome) in some repeat than in another."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from runner.report.load import CellRow
from runner.report.tables import rate_row
from runner.tracking import Params, Tags


def repeat_of(cell: CellRow) -> int:
    try:
        return int(cell.params.get(Params.REPEAT, "0"))
    except ValueError:
        return 0


def repeat_summary(cells: list[CellRow]) -> dict[str, Any] | None:
    """None without repeats; else the crash rate per repeat index, their spread (lowest and highest), and
    per base cell whether its repeats all gave the same answer."""
    if not any(repeat_of(c) for c in cells):
        return None
    by_repeat: dict[int, list[CellRow]] = defaultdict(list)
    by_base: dict[str, list[CellRow]] = defaultdict(list)
    for c in cells:
        by_repeat[repeat_of(c)].append(c)
        by_base[c.params.get(Params.BASE_CELL_ID, c.cell_id)].append(c)
    per_repeat = [rate_row(str(r), by_repeat[r], lambda c: c.crashed) for r in sorted(by_repeat)]
    rates = [row["rate"] for row in per_repeat if row["n"]]
    repeated = {base: group for base, group in by_base.items() if len(group) > 1}
    differing = sorted(
        base
        for base, group in repeated.items()
        if len({(c.status, c.tags.get(Tags.OUTPUT_HASH)) for c in group}) > 1
    )
    return {
        "per_repeat": per_repeat,
        "rate_min": min(rates),
        "rate_max": max(rates),
        "cells": len(repeated),
        "differing": len(differing),
        "differing_cells": differing[:50],
    }
