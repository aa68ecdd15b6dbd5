"""The report as one self-contained report.html (tables, and the PNG charts of runner.report.charts), and
write_report, which writes the charts, the page and report.json into one folder.

The HTML has no external references: its CSS is inline and each chart is a PNG in the same folder, named by
a relative `<img src="name.png">`, so the folder can be zipped, attached to the MLflow run, or opened from
disk. With two executions (`--compare`) every chart and table puts them side by side.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from runner.report.charts import CHARTS, render_charts
from runner.report.retrieval import COLUMNS as RETRIEVAL_COLUMNS
from runner.report.tables import (
    CHART_AXES,
    DISPLAY_AXES,
    MIXED,
    PER_BATCH,
    PER_CELL,
    PERFORMANCE_AXES,
    TABLE_ONLY,
    TITLES,
    RowsOf,
    latency_label,
    table_rows,
    values_in,
)
from runner.report.viewer import VIEW_FILE, Link, axis_link, check_link, crashed_link, viewer_link
from runner.tracking import TRUE, Tags

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


LATENCY_NOTES = {
    PER_CELL: "A cell's latency runs from the start of its batch to the end of its own answer.",
    PER_BATCH: "Each cell shows the wall time of its whole batch (its batch_latency_s), not a time of its own.",
    MIXED: "A cell's latency is its own answer's time where its backend times cells, else its batch's.",
}


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


def _performance_table(ex: dict[str, Any], axis: str) -> str:
    """Latency, tokens/s and GPU memory per value of `axis`; the latency headers say what it measures, or,
    when that differs between rows (one backend times cells, another cannot), a column says it per row."""
    scope = ex.get("latency_scope") or ""
    mixed = scope == MIXED
    lat = "latency {} (s)" + (f", {scope}" if scope and not mixed else "")
    headers = [axis, "finished", lat.format("p50"), lat.format("p95")]
    headers += ["latency is"] if mixed else []
    headers += ["tokens/s p50", "GPU peak p50 (MiB)", "GPU peak max (MiB)"]
    rows = []
    for r in ex["performance"][axis]:
        row = [
            _linked(r["value"], axis_link(axis)),
            str(r["n"]),
            fmt(r["latency_p50"]),
            fmt(r["latency_p95"]),
        ]
        row += [html.escape(r["latency_scope"] or "–")] if mixed else []
        row += [fmt(r["tokens_per_s_p50"]), fmt(r["gpu_peak_mb_p50"]), fmt(r["gpu_peak_mb_max"])]
        rows.append(row)
    return _table(headers, rows)


def _linked(value: str, link: Link | None) -> str:
    """A table row's first cell: its value, linked to its cells in the viewer when `link` names them."""
    filters = link(value) if link else None
    if not filters:
        return html.escape(value)
    href = html.escape(viewer_link(filters))
    return f'<a class="view" href="{href}" title="these cells in pov view">{html.escape(value)}</a>'


def rate_table(
    execs: list[dict[str, Any]], rows_of: RowsOf, first: str, what: str = "crashed", link: Link | None = None
) -> str:
    values = values_in(execs, rows_of)
    headers = [first]
    for ex in execs:
        tag = f" · {ex['run_id'][:8]}" if len(execs) > 1 else ""
        headers += [f"cells{tag}", f"{what}{tag}", f"rate{tag}", f"95% CI{tag}"]
    body = []
    for v in values:
        row = [_linked(v, link)]
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
        f'<p class="note">Each value in a table\'s first column links to its cells in '
        f'<a href="{VIEW_FILE}">{VIEW_FILE}</a> (a check: the cells that failed it).</p>'
    )
    parts.append(
        f'<p class="note">Each cell counts once: child runs tagged <code>{Tags.SUPERSEDED}={TRUE}</code>, '
        "KILLED child runs and unfinished ones are left out (the last column counts them). Intervals "
        "are Wilson 95% score intervals.</p>"
    )

    parts.append('<h2>Crash rate</h2><div class="grid">')
    for axis in CHART_AXES:
        parts.append(f'<div class="card"><h3>By {html.escape(TITLES[axis])}</h3>')
        parts.append(_img(charts, f"crash_{axis}", f"crash rate by {TITLES[axis]}"))
        parts.append(
            rate_table(execs, table_rows("crash_rate", axis), TITLES[axis], link=axis_link(axis)) + "</div>"
        )
    parts.append('<div class="card">')
    for axis in (a for a in DISPLAY_AXES if a in TABLE_ONLY):
        parts.append(f"<h3>By {html.escape(TITLES[axis])}</h3>")
        parts.append(rate_table(execs, table_rows("crash_rate", axis), TITLES[axis], link=axis_link(axis)))
    parts.append("</div></div>")

    parts.append('<h2>Crash causes</h2><div class="grid"><div class="card">')
    parts.append(_img(charts, "crash_causes", "crash causes") + '</div><div class="card">')
    causes = sorted({c for ex in execs for per in ex["crash_causes"].values() for c in per})
    for ex in execs:
        if len(execs) > 1:
            parts.append(f"<h3>{html.escape(ex['label'])}</h3>")
        rows = [
            [_linked(g, crashed_link), *[str(per.get(c, 0)) for c in causes]]
            for g, per in ex["crash_causes"].items()
        ]
        parts.append(_table(["cells", *causes], rows) if causes else '<p class="note">No crashes.</p>')
    parts.append("</div></div>")

    parts.append("<h2>Latency and GPU memory</h2>")
    scope = latency_label(execs)
    if scope:
        note = LATENCY_NOTES.get(scope, LATENCY_NOTES[MIXED])
        parts.append(f'<p class="note">Latency: {html.escape(scope)}. {html.escape(note)}</p>')
    parts.append('<div class="grid">')
    for key, alt in (
        ("latency", "latency"),
        ("gpu", "peak GPU memory (none recorded: CPU run?)"),
        ("vs_prompt_tokens", "against prompt tokens"),
    ):
        parts.append(f'<div class="card wide">{_img(charts, key, alt)}</div>')
    for ex in execs:
        for axis in PERFORMANCE_AXES:
            title_ = f"By {axis}" + (f" · {ex['label']}" if len(execs) > 1 else "")
            parts.append(
                f'<div class="card"><h3>{html.escape(title_)}</h3>{_performance_table(ex, axis)}</div>'
            )
    parts.append("</div>")

    parts.append('<h2>Output checks</h2><div class="grid"><div class="card">')
    parts.append(_img(charts, "checks", "check pass rates"))
    parts.append(
        rate_table(
            execs,
            lambda ex: [{**r, "value": r["check"]} for r in ex["checks"]],
            "check",
            "passed",
            check_link(),
        )
    )
    parts.append('</div><div class="card"><h3>By template</h3>')
    parts.append(
        rate_table(
            execs,
            lambda ex: [{**r, "value": f"{r['check']} · {r['value']}"} for r in ex["checks_by_template"]],
            "check · template",
            "passed",
            check_link("template"),
        )
    )
    parts.append('</div><div class="card"><h3>By persona</h3>')
    parts.append(
        rate_table(
            execs,
            lambda ex: [{**r, "value": f"{r['check']} · {r['value']}"} for r in ex["checks_by_persona"]],
            "check · persona",
            "passed",
            check_link("persona"),
        )
    )
    parts.append("</div></div>")
    parts += extra_sections(execs, charts)
    parts.append(retrieval_section(execs))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _point(p: dict[str, Any] | None) -> str:
    if not p:
        return "–"
    return f"{p['size']} × {p['padded_prompt_tokens']} = {p['batch_tokens']}"


def extra_sections(execs: list[dict[str, Any]], charts: dict[str, str | None]) -> list[str]:
    """The memory frontier, the spread across repeats and the batch-sensitive cells, where an execution has
    any (runner.report.memory, .repeats, .sensitivity)."""
    parts: list[str] = []
    if any(e["failed"] for ex in execs for e in ex["memory"]["frontier"]):
        parts.append("<h2>Memory frontier</h2>")
        parts.append(
            '<p class="note">Every generate call is recorded on its cells. A batch that ran out of memory '
            "was split in halves and tried again, down to one cell; only a cell that ran out of memory alone "
            "is recorded crashed. Batch tokens = batch size × padded prompt tokens.</p>"
        )
        parts.append(_img(charts, "frontier", "memory frontier"))
        rows = []
        for ex in execs:
            for e in ex["memory"]["frontier"]:
                rows.append(
                    [
                        html.escape(ex["run_id"][:8]),
                        _linked(e["model"], axis_link("model")),
                        html.escape(e["cap"]),
                        str(e["attempts"]),
                        _point(e["fitted"]),
                        _point(e["failed"]),
                        "yes" if e["bracketed"] else "no",
                    ]
                )
            rows.append(
                [
                    html.escape(ex["run_id"][:8]),
                    "cells retried smaller",
                    str(ex["memory"]["retried"]),
                    "out of memory alone",
                    str(ex["memory"]["oom_alone"]),
                    "",
                    "",
                ]
            )
        parts.append(
            _table(
                [
                    "execution",
                    "model",
                    "memory cap",
                    "attempts",
                    "largest fitted (size × padded = tokens)",
                    "smallest out of memory",
                    "edge between them",
                ],
                rows,
            )
        )
    if any(ex.get("repeats") for ex in execs):
        parts.append("<h2>Repeats</h2>")
        parts.append(
            '<p class="note">The rates above count every repeat as a cell. Here: the crash rate of each '
            "repeat, and the cells whose repeats did not all give the same answer.</p>"
        )
        for ex in execs:
            rep = ex.get("repeats")
            if not rep:
                continue
            parts.append(
                rate_table([ex], lambda e: e["repeats"]["per_repeat"], "repeat", link=axis_link("repeat"))
            )
            parts.append(
                f'<p class="note">{html.escape(ex["label"])}: crash rate across repeats '
                f"{fmt(rep['rate_min'], 'pct')} – {fmt(rep['rate_max'], 'pct')}; "
                f"{rep['differing']} of {rep['cells']} cells answered differently in some repeat.</p>"
            )
    if any(ex.get("batch_sensitive") for ex in execs):
        parts.append("<h2>Batch-sensitive cells</h2>")
        parts.append(
            '<p class="note">Cells that <code>pov audit</code> ran again alone: an answer that changed '
            "depended on the prompts it shared its batch with (padding, kernels).</p>"
        )
        for ex in execs:
            sens = ex.get("batch_sensitive")
            if not sens:
                continue
            parts.append(
                f'<p><span class="{"hi" if sens["changed"] else ""}">{sens["changed"]} of {sens["audited"]}'
                f"</span> audited cells of {html.escape(ex['label'])} changed when run alone.</p>"
            )
            rows = [
                [
                    "<code>" + _linked(c["cell_id"], lambda v: {"cell": v}) + "</code>",
                    html.escape(c["template"]),
                    html.escape(c["question"]),
                    fmt(int(c["batch_size"])) if c["batch_size"] is not None else "–",
                    f"<code>{html.escape(c['batch_id'])}</code>",
                ]
                for c in sens["cells"]
            ]
            if rows:
                parts.append(_table(["cell", "template", "question", "batch size", "batch"], rows))
    return parts


def retrieval_section(execs: list[dict[str, Any]]) -> str:
    """What retrieval did, by scoring method and POV set (runner.report.retrieval), one table per execution."""
    parts = ["<h2>Retrieval</h2>"]
    if not any(ex.get("retrieval") for ex in execs):
        parts.append(
            '<p class="note">No retrieval metrics: these cells were recorded before they existed.</p>'
        )
        return "\n".join(parts)
    parts.append(
        '<p class="note">Each retrieval (question, POV set, method, k schedule) counts once. Relevance kept: '
        "the share of the final chunks among the question's own top k3 (stage 2). Stance specificity: 1 minus "
        "the mean overlap (Jaccard) of a POV set's final chunks with the other sets'. Truncated: chunks longer "
        "than the embedder's window.</p>"
    )
    for ex in execs:
        if len(execs) > 1:
            parts.append(f"<h3>{html.escape(ex['label'])}</h3>")
        rows = [
            [html.escape(r["value"]), str(r["n"]), *(fmt(r[key], kind) for key, _, kind in RETRIEVAL_COLUMNS)]
            for r in ex.get("retrieval", [])
        ]
        parts.append(_table(["method · POV set", "retrievals", *(t for _, t, _ in RETRIEVAL_COLUMNS)], rows))
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
    out.mkdir(parents=True, exist_ok=True)
    charts = render_charts(data, out)
    # A chart an earlier report drew but this one has no data for would otherwise be logged with it.
    for key in CHARTS:
        if not charts.get(key):
            (out / f"{key}.png").unlink(missing_ok=True)
    (out / "report.json").write_text(json.dumps(_finite(data), indent=1, default=str, allow_nan=False))
    page = out / "report.html"
    page.write_text(render_html(data, charts, title), encoding="utf-8")
    return page
