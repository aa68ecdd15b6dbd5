"""Render the report's data (runner.report.tables.build) as PNG charts and one self-contained report.html.

The HTML has no external references: its CSS is inline and each chart is a PNG in the same folder, named by
a relative `<img src="name.png">`, so the folder can be zipped, attached to the MLflow run, or opened from
disk. With two executions (`--compare`) every chart and table puts them side by side.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

TITLES = {
    "template": "template",
    "model": "model",
    "persona": "persona",
    "k": "k schedule (k1-k2-k3)",
    "pov_set": "POV set",
    "question": "question",
    "prompt_tokens": "prompt tokens (bins)",
}
CHART_AXES = ("template", "model", "persona", "k", "prompt_tokens")
COLORS = ("#3b6ea8", "#e07b39")


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


def _values(execs: list[dict[str, Any]], rows_of: Any) -> list[str]:
    seen: dict[str, None] = {}
    for ex in execs:
        for row in rows_of(ex):
            seen.setdefault(row["value"], None)
    return list(seen)


def _rate_bars(
    ax: Any, execs: list[dict[str, Any]], rows_of: Any, ylabel: str, horizontal: bool = False
) -> None:
    """Grouped bars of rates with asymmetric Wilson error bars and k/n labels."""
    values = _values(execs, rows_of)
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
    n = len(_values(execs, lambda ex: ex["crash_rate"][axis]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.9 * n * len(execs)), 3.4))
    _rate_bars(ax, execs, lambda ex: ex["crash_rate"][axis], "crash rate (Wilson 95% CI)")
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
    for ax, axis in zip(axes, ("template", "model"), strict=True):
        values = _values(execs, lambda ex, a=axis: ex["performance"][a])
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
    fig.suptitle("Latency of finished cells" if metric == "latency" else "Peak GPU memory (allocated)")
    return _save(fig, out, f"{metric}.png")


def scatter_chart(execs: list[dict[str, Any]], out: Path) -> str | None:
    """Latency and peak GPU memory against prompt tokens; crashes as ticks along the bottom."""
    pts = [(ex, p) for ex in execs for p in ex["points"] if p["prompt_tokens"] is not None]
    if not pts:
        return None
    plt = _plt()
    panels = [("latency_s", "latency (s)")]
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
    fig.suptitle("Against prompt length")
    return _save(fig, out, "vs_prompt_tokens.png")


def checks_chart(execs: list[dict[str, Any]], out: Path) -> str | None:
    if not any(ex["checks"] for ex in execs):
        return None
    plt = _plt()
    rows_of = lambda ex: [{**r, "value": r["check"]} for r in ex["checks"]]  # noqa: E731
    n = len(_values(execs, rows_of))
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
    return charts


# ---- HTML ----

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.grid{display:flex;flex-wrap:wrap;gap:1.2em}
.card{flex:1 1 540px;max-width:100%}.card h3{margin:.3em 0}.wide{flex-basis:100%}
.hi{color:#c0392b;font-weight:600}
"""


def fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def rate_table(execs: list[dict[str, Any]], rows_of: Any, first: str, what: str = "crashed") -> str:
    values = _values(execs, rows_of)
    headers = [first]
    for ex in execs:
        tag = f" · {ex['run_id'][:8]}" if len(execs) > 1 else ""
        headers += [f"cells{tag}", f"{what}{tag}", f"rate{tag}", f"95% CI{tag}"]
    body = []
    for v in values:
        row = [html.escape(v)]
        for ex in execs:
            r = next((r for r in rows_of(ex) if r["value"] == v), None)
            row += (
                [
                    str(r["n"]),
                    str(r["k"]),
                    fmt(r["rate"], "pct"),
                    f"{fmt(r['lo'], 'pct')} – {fmt(r['hi'], 'pct')}",
                ]
                if r
                else ["0", "–", "–", "–"]
            )
        body.append(row)
    return _table(headers, body)


def _img(charts: dict[str, str | None], key: str, alt: str) -> str:
    name = charts.get(key)
    if not name:
        return f'<p class="note">No data for “{html.escape(alt)}”.</p>'
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def render_html(data: dict[str, Any], charts: dict[str, str | None], title: str) -> str:
    execs = data["executions"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    meta_rows = []
    for ex in execs:
        ov = ex["overall"]
        ignored = ", ".join(f"{k}: {v}" for k, v in sorted(ex["ignored"].items())) or "none"
        git = ex["git"]
        meta_rows.append(
            [
                html.escape(ex["run_name"]),
                f"<code>{ex['run_id']}</code>",
                html.escape(ex["spec_name"]),
                f"<code>{html.escape(ex['spec_hash'])}</code>",
                html.escape(ex["state"]),
                html.escape(f"{git['commit'][:10]}{' (dirty)' if git['dirty'] == 'true' else ''}"),
                html.escape(ex["gpu"] or "–"),
                str(ov["n"]),
                str(ov["k"]),
                f"{fmt(ov['rate'], 'pct')} [{fmt(ov['lo'], 'pct')} – {fmt(ov['hi'], 'pct')}]",
                html.escape(ignored),
            ]
        )
    parts.append(
        _table(
            [
                "execution",
                "run id",
                "spec",
                "spec hash",
                "state",
                "git",
                "GPU",
                "cells",
                "crashed",
                "crash rate [95% CI]",
                "child runs ignored",
            ],
            meta_rows,
        )
    )
    parts.append(
        '<p class="note">Each cell counts once: child runs tagged <code>pov.superseded=true</code>, '
        "KILLED child runs and unfinished ones are left out (the last column counts them). Intervals "
        "are Wilson 95% score intervals.</p>"
    )

    parts.append('<h2>Crash rate</h2><div class="grid">')
    for axis in CHART_AXES:
        parts.append(f'<div class="card"><h3>By {html.escape(TITLES[axis])}</h3>')
        parts.append(_img(charts, f"crash_{axis}", f"crash rate by {TITLES[axis]}"))
        parts.append(rate_table(execs, lambda ex, a=axis: ex["crash_rate"][a], TITLES[axis]) + "</div>")
    parts.append('<div class="card">')
    for axis in ("pov_set", "question"):
        parts.append(f"<h3>By {html.escape(TITLES[axis])}</h3>")
        parts.append(rate_table(execs, lambda ex, a=axis: ex["crash_rate"][a], TITLES[axis]))
    parts.append("</div></div>")

    parts.append('<h2>Crash causes</h2><div class="grid"><div class="card">')
    parts.append(_img(charts, "crash_causes", "crash causes") + '</div><div class="card">')
    causes = sorted({c for ex in execs for per in ex["crash_causes"].values() for c in per})
    for ex in execs:
        if len(execs) > 1:
            parts.append(f"<h3>{html.escape(ex['label'])}</h3>")
        rows = [
            [html.escape(g), *[str(per.get(c, 0)) for c in causes]] for g, per in ex["crash_causes"].items()
        ]
        parts.append(_table(["cells", *causes], rows) if causes else '<p class="note">No crashes.</p>')
    parts.append("</div></div>")

    parts.append('<h2>Latency and GPU memory</h2><div class="grid">')
    for key, alt in (
        ("latency", "latency"),
        ("gpu", "peak GPU memory (none recorded: CPU run?)"),
        ("vs_prompt_tokens", "against prompt tokens"),
    ):
        parts.append(f'<div class="card wide">{_img(charts, key, alt)}</div>')
    for ex in execs:
        for axis in ("template", "model"):
            title_ = f"By {axis}" + (f" · {ex['label']}" if len(execs) > 1 else "")
            rows = [
                [
                    html.escape(r["value"]),
                    str(r["n"]),
                    fmt(r["latency_p50"]),
                    fmt(r["latency_p95"]),
                    fmt(r["tokens_per_s_p50"]),
                    fmt(r["gpu_peak_mb_p50"]),
                    fmt(r["gpu_peak_mb_max"]),
                ]
                for r in ex["performance"][axis]
            ]
            parts.append(
                f'<div class="card"><h3>{html.escape(title_)}</h3>'
                + _table(
                    [
                        axis,
                        "finished",
                        "latency p50 (s)",
                        "latency p95 (s)",
                        "tokens/s p50",
                        "GPU peak p50 (MiB)",
                        "GPU peak max (MiB)",
                    ],
                    rows,
                )
                + "</div>"
            )
    parts.append("</div>")

    parts.append('<h2>Output checks</h2><div class="grid"><div class="card">')
    parts.append(_img(charts, "checks", "check pass rates"))
    parts.append(
        rate_table(execs, lambda ex: [{**r, "value": r["check"]} for r in ex["checks"]], "check", "passed")
    )
    parts.append('</div><div class="card"><h3>By template</h3>')
    parts.append(
        rate_table(
            execs,
            lambda ex: [{**r, "value": f"{r['check']} · {r['value']}"} for r in ex["checks_by_template"]],
            "check · template",
            "passed",
        )
    )
    parts.append("</div></div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _finite(obj: Any) -> Any:
    """NaN (an empty group's rate or percentile) as null, so report.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(data: dict[str, Any], out: Path, title: str) -> Path:
    """PNG charts, report.html and report.json (the tables' data) into `out`."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    charts = render_charts(data, out)
    # A chart an earlier report drew but this one has no data for would otherwise be logged with it.
    ours = {f"crash_{a}.png" for a in CHART_AXES} | {
        f"{n}.png" for n in ("crash_causes", "latency", "gpu", "vs_prompt_tokens", "checks")
    }
    for stale in ours - set(filter(None, charts.values())):
        (out / stale).unlink(missing_ok=True)
    (out / "report.json").write_text(json.dumps(_finite(data), indent=1, default=str, allow_nan=False))
    page = out / "report.html"
    page.write_text(render_html(data, charts, title), encoding="utf-8")
    return page
