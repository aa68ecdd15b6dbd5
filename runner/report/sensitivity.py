"""Batch-sensitive cells in the report: `pov audit` reran a sample of cells alone and tagged each
`pov.batch_sensitive` (`true` when the answer changed); the report counts them and names the ones that
changed, with the batch each had shared."""

from __future__ import annotations

from typing import Any

from runner.report.load import CellRow
from runner.tracking import TRUE, Metrics, Tags


def batch_sensitivity(cells: list[CellRow]) -> dict[str, Any] | None:
    """None when no cell was audited; else how many were and which changed."""
    audited = [c for c in cells if Tags.BATCH_SENSITIVE in c.tags]
    if not audited:
        return None
    changed = [c for c in audited if c.tags[Tags.BATCH_SENSITIVE] == TRUE]
    return {
        "audited": len(audited),
        "changed": len(changed),
        "cells": [
            {
                "cell_id": c.cell_id,
                "template": c.axes["template"],
                "question": c.axes["question"],
                "batch_size": c.metrics.get(Metrics.BATCH_SIZE),
                "batch_id": c.tags.get(Tags.BATCH_ID, ""),
            }
            for c in sorted(changed, key=lambda c: c.cell_id)
        ],
    }
