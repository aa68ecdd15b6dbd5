"""What retrieval did, by scoring method and POV set: the per-cell retrieval metrics (runner.retrieval.metrics,
read back from MLflow) averaged over each retrieval once (cells that differ only in model, template or persona
share their retrieval and count once).

Columns: relevance kept (share of the final chunks among the question's own top k3), the best match's rank in
the POV stage's order and how often it was kept (rank <= k3), stance specificity (1 - overlap with the other
POV sets' final chunks), boilerplate share and truncated chunks per stage.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from runner.report.load import CellRow
from runner.tracking import Metrics

BEST_KEPT = "best_match_kept"
COLUMNS: list[tuple[str, str, str]] = [
    (Metrics.RELEVANCE_KEPT, "relevance kept", "pct"),
    (BEST_KEPT, "best match kept", "pct"),
    (Metrics.BEST_MATCH_RANK, "best match's rank", ""),
    (Metrics.STANCE_SPECIFICITY, "stance specificity", ""),
    *((Metrics.STAGE_BOILERPLATE_SHARE.format(n=n), f"boilerplate stage {n}", "pct") for n in (1, 2, 3)),
    *((Metrics.STAGE_TRUNCATED.format(n=n), f"truncated stage {n}", "") for n in (1, 3)),
]
"""(key in a row, title, format) of each column the report shows."""
ALL = "all"


def _k3(k_label: str) -> int | None:
    parts = k_label.split("-")
    return int(parts[-1]) if len(parts) == 3 and parts[-1].isdigit() else None


def _retrievals(cells: list[CellRow]) -> dict[tuple[str, ...], dict[str, float]]:
    """One set of metrics per retrieval (question, POV set, method, k), from the cells that carry them."""
    out: dict[tuple[str, ...], dict[str, float]] = {}
    for c in cells:
        if Metrics.RELEVANCE_KEPT not in c.metrics:
            continue  # recorded before retrieval had metrics, or crashed before retrieval
        a = c.axes
        key = (a["pov_score"], a["pov_set"], a["k"], a["question"])
        if key in out:
            continue
        values = dict(c.metrics)
        k3 = _k3(a["k"])
        if k3 is not None and Metrics.BEST_MATCH_RANK in values:
            values[BEST_KEPT] = float(values[Metrics.BEST_MATCH_RANK] <= k3)
        out[key] = values
    return out


def _row(value: str, method: str, pov_set: str, group: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"value": value, "pov_score": method, "pov_set": pov_set, "n": len(group)}
    for key, _, _ in COLUMNS:
        got = [g[key] for g in group if key in g and math.isfinite(g[key])]
        row[key] = statistics.fmean(got) if got else math.nan
    return row


def retrieval_rows(cells: list[CellRow]) -> list[dict[str, Any]]:
    """A row per scoring method over every POV set (`pov_set` "all"), then per (method, POV set)."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for (method, pov_set, _, _), values in _retrievals(cells).items():
        groups[(method, ALL)].append(values)
        groups[(method, pov_set)].append(values)
    order = sorted(groups, key=lambda g: (g[0], g[1] != ALL, g[1]))
    return [_row(f"{m} · {p}", m, p, groups[(m, p)]) for m, p in order]
