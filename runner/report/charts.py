"""The report's PNG charts (matplotlib), drawn from its data (runner.report.tables.build): crash rate per axis
value and per prompt-token bin with Wilson intervals, crash causes, latency and GPU memory, both against
prompt length, and check pass rates. With two executions (`--compare`) each chart puts them side by side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from runner.report.memory import frontier_chart
from runner.report.tables import (
    CHART_AXES,
    PER_BATCH,
    PER_CELL,
    PERFORMANCE_AXES,
    TITLES,
    RowsOf,
    latency_label,
    table_rows,
    values_in,
)

COLORS = ("#3b6ea8", "#e07b39")
"""One colour per execution."""
CHARTS = (
    *(f"crash_{axis}" for axis in CHART_AXES),
    "crash_causes",
    "latency",
    "gpu",
    "vs_prompt_tokens",
    "checks",
    "frontier",
)
"""Every chart's key; a drawn chart is the file <key>.png."""


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    _plt().close(fig)
    return name


def _rate_bars(
    ax: Any, execs: list[dict[str, Any]], rows_of: RowsOf, ylabel: str, horizontal: bool = False
) -> None:
    """Grouped bars of rates with asymmetric Wilson error bars and k/n labels."""
    values = values_in(execs, rows_of)
    width = 0.8 / len(execs)
    for i, ex in enumerate(execs):
        rows = {r["value"]: r for r in rows_of(ex)}
        pos, rate, err_lo, err_hi, notes = [], [], [], [], []
        for j, v in enumerate(values):
            if v in rows and rows[v]["n"]:
                r = rows[v]
                pos.append(j - 0.4 + width * (i + 0.5))
                rate.append(r["rate"])
                err_lo.append(r["rate"] - r["lo"])
                err_hi.append(r["hi"] - r["rate"])
                notes.append(f"{r['k']}/{r['n']}")
        label = ex["label"] if len(execs) > 1 else None
        if horizontal:
            ax.barh(pos, rate, height=width, xerr=[err_lo, err_hi], color=COLORS[i], capsize=3, label=label)
            for p, r, hi, note in zip(pos, rate, err_hi, notes, strict=True):
                ax.text(r + hi + 0.01, p, note, va="center", fontsize=8)
        else:
            ax.bar(pos, rate, width=width, yerr=[err_lo, err_hi], color=COLORS[i], capsize=3, label=label)
            for p, r, hi, note in zip(pos, rate, err_hi, notes, strict=True):
                ax.text(p, r + hi + 0.015, note, ha="center", fontsize=8)
    ticks = list(range(len(values)))
    if horizontal:
        ax.set_yticks(ticks, values)
        ax.set_xlim(0, 1.15)
        ax.set_xlabel(ylabel)
        ax.invert_yaxis()
    else:
        ax.set_xticks(
            ticks,
            values,
            rotation=20 if max((len(v) for v in values), default=0) > 10 else 0,
            ha="right" if max((len(v) for v in values), default=0) > 10 else "center",
        )
        ax.set_ylim(0, 1.1)
        ax.set_ylabel(ylabel)
    if len(execs) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)


def crash_chart(execs: list[dict[str, Any]], axis: str, out: Path) -> str:
    plt = _plt()
    n = len(values_in(execs, table_rows("crash_rate", axis)))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.9 * n * len(execs)), 3.4))
    _rate_bars(ax, execs, table_rows("crash_rate", axis), "crash rate (Wilson 95% CI)")
    ax.set_title(f"Crash rate by {TITLES[axis]}")
    ax.set_xlabel(TITLES[axis])
    return _save(fig, out, f"crash_{axis}.png")


def causes_chart(execs: list[dict[str, Any]], out: Path) -> str | None:
    causes = sorted({c for ex in execs for per in ex["crash_causes"].values() for c in per})
    if not causes:
        return None
    plt = _plt()
    labels, stacks = [], []
    for ex in execs:
        for group, counts in ex["crash_causes"].items():
            labels.append(group if len(execs) == 1 else f"{group}\n{ex['run_id'][:8]}")
            stacks.append(counts)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 1.0 * len(labels)), 3.4))
    bottom = [0] * len(labels)
    cmap = plt.get_cmap("tab10")
    for ci, cause in enumerate(causes):
        vals = [s.get(cause, 0) for s in stacks]
        ax.bar(range(len(labels)), vals, bottom=bottom, color=cmap(ci), label=cause)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("crashed cells")
    ax.set_title("Crash causes (all cells, then per template)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "crash_causes.png")


def perf_chart(execs: list[dict[str, Any]], out: Path, metric: str) -> str | None:
    """Latency p50/p95 (metric='latency') or peak GPU memory (metric='gpu') by template and by model."""
    keys = ("latency_p50", "latency_p95") if metric == "latency" else ("gpu_peak_mb_p50", "gpu_peak_mb_max")
    # A CPU run records 0 MiB of GPU memory: no chart rather than a row of empty bars.
    if not any(r[k] > 0 for ex in execs for rows in ex["performance"].values() for r in rows for k in keys):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, axis in zip(axes, PERFORMANCE_AXES, strict=True):
        values = values_in(execs, table_rows("performance", axis))
        series = [(ex, k) for ex in execs for k in keys]
        width = 0.8 / len(series)
        for si, (ex, k) in enumerate(series):
            rows = {r["value"]: r for r in ex["performance"][axis]}
            ys = [rows[v][k] if v in rows else math.nan for v in values]
            ei = execs.index(ex)
            label = k.replace("_", " ") + (f" · {ex['run_id'][:8]}" if len(execs) > 1 else "")
            ax.bar(
                [j - 0.4 + width * (si + 0.5) for j in range(len(values))],
                ys,
                width=width,
                color=COLORS[ei],
                alpha=1.0 if k.endswith(("p50",)) else 0.55,
                label=label,
            )
        ax.set_xticks(range(len(values)), values, fontsize=8)
        ax.set_title(f"by {axis}")
        ax.set_ylabel("seconds" if metric == "latency" else "MiB")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    scope = latency_label(execs)
    latency_title = "Latency of finished cells" + (f", {scope}" if scope else "")
    fig.suptitle(latency_title if metric == "latency" else "Peak GPU memory (allocated)", fontsize=10)
    return _save(fig, out, f"{metric}.png")


def scatter_chart(execs: list[dict[str, Any]], out: Path) -> str | None:
    """Latency and peak GPU memory against prompt tokens; crashes as ticks along the bottom."""
    pts = [(ex, p) for ex in execs for p in ex["points"] if p["prompt_tokens"] is not None]
    if not pts:
        return None
    plt = _plt()
    scope = latency_label(execs)
    unit = {PER_CELL: ", per cell", PER_BATCH: ", per batch"}.get(scope, "")
    panels = [("latency_s", f"latency (s){unit}")]
    if any((p["gpu_peak_mb"] or 0) > 0 for _, p in pts):
        panels.append(("gpu_peak_mb", "peak GPU MiB"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    templates = sorted({p["template"] for _, p in pts})
    cmap = plt.get_cmap("tab10")
    markers = ("o", "s")
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        for ti, t in enumerate(templates):
            for ei, ex in enumerate(execs):
                ok = [
                    p
                    for e, p in pts
                    if e is ex and p["template"] == t and not p["crashed"] and p[key] is not None
                ]
                label = t + (f" · {ex['run_id'][:8]}" if len(execs) > 1 else "")
                ax.scatter(
                    [p["prompt_tokens"] for p in ok],
                    [p[key] for p in ok],
                    s=14,
                    color=cmap(ti),
                    marker=markers[ei % 2],
                    alpha=0.75,
                    label=label,
                )
        crashed = [p["prompt_tokens"] for _, p in pts if p["crashed"]]
        if crashed:
            ax.plot(crashed, [0] * len(crashed), "|", color="#c0392b", markersize=12, label="crashed cell")
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Against prompt length" + (f" (latency {scope})" if scope else ""), fontsize=10)
    return _save(fig, out, "vs_prompt_tokens.png")


def checks_chart(execs: list[dict[str, Any]], out: Path) -> str | None:
    if not any(ex["checks"] for ex in execs):
        return None
    plt = _plt()
    rows_of = lambda ex: [{**r, "value": r["check"]} for r in ex["checks"]]  # noqa: E731
    n = len(values_in(execs, rows_of))
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.45 * n * len(execs)))
    _rate_bars(ax, execs, rows_of, "pass rate (Wilson 95% CI)", horizontal=True)
    ax.set_title("Output checks: pass rate over finished cells")
    return _save(fig, out, "checks.png")


def render_charts(data: dict[str, Any], out: Path) -> dict[str, str | None]:
    execs = data["executions"]
    charts: dict[str, str | None] = {f"crash_{a}": crash_chart(execs, a, out) for a in CHART_AXES}
    charts["crash_causes"] = causes_chart(execs, out)
    charts["latency"] = perf_chart(execs, out, "latency")
    charts["gpu"] = perf_chart(execs, out, "gpu")
    charts["vs_prompt_tokens"] = scatter_chart(execs, out)
    charts["checks"] = checks_chart(execs, out)
    charts["frontier"] = frontier_chart(execs, out)
    return charts
