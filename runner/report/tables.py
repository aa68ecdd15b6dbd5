"""The report's tables: the counted cells of one or two executions (runner.report.load) aggregated into plain
dicts and lists, which report.json holds and the page and the terminal show. Also which axes the report
shows, in which order, and under which titles.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from runner.report.load import CellRow, Execution
from runner.report.retrieval import retrieval_rows
from runner.report.stats import bin_edges, bin_index, bin_labels, percentile, wilson
from runner.spec import AXES
from runner.tracking import CHECK_PASS, Metrics, Params, Tags

TOKENS = "prompt_tokens"
"""The pseudo-axis of prompt-length bins."""
LEAD = "template"
DISPLAY_AXES = (LEAD, *(a for a in AXES if a != LEAD))
"""The order the report shows the axes in: the template first, because the report is about how the prompt
drives crashes (crash causes, checks and latency are also broken down by template), then the others in cell
order (runner.spec.AXES), as `pov plan` lists them. The data (report.json, CellRow.axes) is in cell order."""
TABLE_ONLY = ("pov_set", "pov_score", "question")
"""Axes the page shows as tables only, together in its last crash-rate card (a chart of one bar per question
would not be readable)."""
CHART_AXES = (*(a for a in DISPLAY_AXES if a not in TABLE_ONLY), TOKENS)
"""What gets a crash-rate chart (and a table beside it), in display order; also the terminal's tables."""
PERFORMANCE_AXES = ("template", "model")
"""Latency and GPU memory are shown per value of these: the two axes that change the work a cell takes."""
TITLES = {
    **{axis: axis for axis in AXES},
    "k": "k schedule (k1-k2-k3)",
    "pov_set": "POV set",
    "pov_score": "POV scoring method",
    TOKENS: "prompt tokens (bins)",
}
PER_CELL = "per cell"
PER_BATCH = "per batch (backend cannot time cells)"
MIXED = "per cell, or per batch where the backend cannot time cells"
Bins = tuple[list[float], list[str]]
RowsOf = Callable[[dict[str, Any]], list[dict[str, Any]]]
"""Picks one table's rows (each with a "value") out of an execution's summary."""


def rate_row(value: str, rows: list[CellRow], hit: Callable[[CellRow], bool]) -> dict[str, Any]:
    n, k = len(rows), sum(1 for r in rows if hit(r))
    p, lo, hi = wilson(k, n)
    return {"value": value, "n": n, "k": k, "rate": p, "lo": lo, "hi": hi}


def _k_order(value: str) -> tuple[Any, ...]:
    try:
        return (0, *(-int(x) for x in value.split("-")))
    except ValueError:
        return (1, value)


def crash_rates(cells: list[CellRow], axis: str, bins: Bins | None = None) -> list[dict[str, Any]]:
    """Crash rate per value of an axis (or per prompt-token bin), with Wilson 95% intervals."""
    groups: dict[str, list[CellRow]] = defaultdict(list)
    if axis == TOKENS:
        edges, labels = bins or ([], [])
        known = [(c, t) for c in cells if (t := c.prompt_tokens) is not None]
        for c, t in known:
            groups[labels[bin_index(t, edges)]].append(c)
        order = [label for label in labels if label in groups]
        if len(known) < len(cells):
            groups["unknown"] = [c for c in cells if c.prompt_tokens is None]
            order.append("unknown")
    else:
        for c in cells:
            groups[c.axes[axis]].append(c)
        order = sorted(groups, key=_k_order) if axis == "k" else sorted(groups)
    return [rate_row(v, groups[v], lambda r: r.crashed) for v in order]


def crash_causes(cells: list[CellRow]) -> dict[str, dict[str, int]]:
    """Crashes per cause, overall (`all`) and per template."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for c in cells:
        if c.crashed:
            cause = c.cause or "unknown"
            out["all"][cause] += 1
            out[c.axes["template"]][cause] += 1
    return {
        k: dict(sorted(v.items())) for k, v in sorted(out.items(), key=lambda kv: (kv[0] != "all", kv[0]))
    }


def _values(cells: list[CellRow], metric: str) -> list[float]:
    return [c.metrics[metric] for c in cells if metric in c.metrics]


def latency_scope(cells: list[CellRow]) -> str:
    """What the latencies of these cells measure: PER_CELL, PER_BATCH, MIXED, or "" when none has one."""
    timed = {
        c.metrics.get(Metrics.LATENCY_PER_CELL, 0.0) == 1.0
        for c in cells
        if not c.crashed and Metrics.LATENCY_S in c.metrics
    }
    if not timed:
        return ""
    if timed == {True}:
        return PER_CELL
    return PER_BATCH if timed == {False} else MIXED


def performance(cells: list[CellRow], axis: str) -> list[dict[str, Any]]:
    """Latency p50/p95 (with what it measures: `latency_scope`) and peak GPU memory of finished cells, per
    value of an axis."""
    groups: dict[str, list[CellRow]] = defaultdict(list)
    for c in cells:
        if not c.crashed:
            groups[c.axes[axis]].append(c)
    rows = []
    for value in sorted(groups):
        lat = _values(groups[value], Metrics.LATENCY_S)
        mem = _values(groups[value], Metrics.GPU_PEAK_ALLOCATED_MB)
        tps = _values(groups[value], Metrics.TOKENS_PER_S)
        rows.append(
            {
                "value": value,
                "n": len(groups[value]),
                "latency_p50": percentile(lat, 50),
                "latency_p95": percentile(lat, 95),
                "latency_scope": latency_scope(groups[value]),
                "tokens_per_s_p50": percentile(tps, 50),
                "gpu_peak_mb_max": max(mem) if mem else math.nan,
                "gpu_peak_mb_p50": percentile(mem, 50),
            }
        )
    return rows


def check_rates(cells: list[CellRow], by: str | None = None) -> list[dict[str, Any]]:
    """Pass rate of every `check.<name>` tag over the finished cells that carry it."""
    names = sorted({name for c in cells for name in c.checks})
    rows = []
    for name in names:
        have = [c for c in cells if name in c.checks]

        def passed(r: CellRow, name: str = name) -> bool:
            return r.checks[name] == CHECK_PASS

        if by is None:
            rows.append({"check": name, **rate_row("all", have, passed)})
            continue
        for value in sorted({c.axes[by] for c in have}):
            rows.append({"check": name, **rate_row(value, [c for c in have if c.axes[by] == value], passed)})
    return rows


def points(cells: list[CellRow]) -> list[dict[str, Any]]:
    """Per-cell values for the scatter plots against prompt length."""
    return [
        {
            "prompt_tokens": c.prompt_tokens,
            "latency_s": c.metrics.get(Metrics.LATENCY_S),
            "gpu_peak_mb": c.metrics.get(Metrics.GPU_PEAK_ALLOCATED_MB),
            "crashed": c.crashed,
            "template": c.axes["template"],
            "model": c.axes["model"],
        }
        for c in cells
    ]


def summarize(ex: Execution, bins: Bins) -> dict[str, Any]:
    """Every table of one execution."""
    cells = ex.cells
    return {
        "run_id": ex.run_id,
        "run_name": ex.run_name,
        "label": ex.label,
        "spec_name": ex.tags.get(Tags.SPEC_NAME, ex.params.get(Params.SPEC_NAME, "")),
        "spec_hash": ex.tags.get(Tags.SPEC_HASH, ex.params.get(Params.SPEC_HASH, "")),
        "state": ex.tags.get(Tags.STATE, ex.status.lower()),
        "git": {
            "commit": ex.tags.get(Tags.GIT_COMMIT, ""),
            "branch": ex.tags.get(Tags.GIT_BRANCH, ""),
            "dirty": ex.tags.get(Tags.GIT_DIRTY, ""),
        },
        "gpu": ex.tags.get(Tags.GPU_NAME, ""),
        "ignored": ex.ignored,
        "overall": rate_row("all", cells, lambda r: r.crashed),
        "crash_rate": {axis: crash_rates(cells, axis, bins) for axis in (*AXES, TOKENS)},
        "crash_causes": crash_causes(cells),
        "performance": {axis: performance(cells, axis) for axis in PERFORMANCE_AXES},
        "latency_scope": latency_scope(cells),
        "checks": check_rates(cells),
        "checks_by_template": check_rates(cells, "template"),
        "checks_by_persona": check_rates(cells, "persona"),
        "points": points(cells),
        "retrieval": retrieval_rows(cells),
        **extras(cells),
    }


def extras(cells: list[CellRow]) -> dict[str, Any]:
    """The tables of the memory frontier, repeats and batch sensitivity (each None or empty when the
    execution has nothing for it)."""
    from runner.report.memory import memory_summary
    from runner.report.repeats import repeat_summary
    from runner.report.sensitivity import batch_sensitivity

    return {
        "memory": memory_summary(cells),
        "repeats": repeat_summary(cells),
        "batch_sensitive": batch_sensitivity(cells),
    }


def latency_label(execs: list[dict[str, Any]]) -> str:
    """What the latencies shown measure, for a chart or table title: one scope, or one per execution."""
    scopes = {ex["run_id"]: ex["latency_scope"] for ex in execs if ex.get("latency_scope")}
    if len(set(scopes.values())) <= 1:
        return next(iter(scopes.values()), "")
    return "; ".join(f"{run_id[:8]}: {scope}" for run_id, scope in scopes.items())


def table_rows(table: str, axis: str) -> RowsOf:
    """Picks the rows of `table` ("crash_rate", "performance") for one axis out of an execution's summary."""
    return lambda ex: ex[table][axis]


def values_in(execs: list[dict[str, Any]], rows_of: RowsOf) -> list[str]:
    """The values of one table over every execution, in first-seen order: the rows of a side-by-side view."""
    return list(dict.fromkeys(row["value"] for ex in execs for row in rows_of(ex)))


def build(executions: list[Execution]) -> dict[str, Any]:
    """The report's data: one summary per execution, prompt-token bins shared so they line up."""
    tokens = [t for ex in executions for c in ex.cells if (t := c.prompt_tokens) is not None]
    # One set of bins for every execution, so that --compare lines them up.
    bins = (edges := bin_edges(tokens)), bin_labels(edges, tokens)
    return {"executions": [summarize(ex, bins) for ex in executions], "token_bins": edges}
