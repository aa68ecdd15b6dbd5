"""The report's memory frontier: every attempt the cells recorded (runner.generation.Attempt, in the
`pov.attempts` tag), where each model stopped fitting under each memory cap (runner.generation.frontier),
and the chart of prompt tokens x batch size, fitted against out of memory, one panel per template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.generation import FITTED, Attempt, frontier
from runner.report.load import CellRow
from runner.tracking import Tags


def cell_attempts(cell: CellRow) -> list[Attempt]:
    """The attempts a cell recorded (none for a cell recorded before attempts were, or a bad tag)."""
    try:
        stored = json.loads(cell.tags.get(Tags.ATTEMPTS, "[]"))
    except ValueError:
        return []
    return [Attempt.from_dict(a) for a in stored if isinstance(a, dict)] if isinstance(stored, list) else []


def _edge(a: Attempt | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "size": a.size,
        "padded_prompt_tokens": a.padded_prompt_tokens,
        "batch_tokens": a.batch_tokens,
        "outcome": a.outcome,
        "gpu_peak_mb": a.gpu_peak_mb,
    }


def memory_summary(cells: list[CellRow]) -> dict[str, Any]:
    """Every attempt once (with the templates and model of the cells in it), the frontier per model and
    cap, and how many cells were retried in smaller batches or ran out of memory alone."""
    attempts: dict[str, dict[str, Any]] = {}
    pairs: list[tuple[str, Attempt]] = []
    for cell in cells:
        for a in cell_attempts(cell):
            row = attempts.setdefault(
                a.id, {**a.to_dict(), "model": cell.axes["model"], "templates": [], "cells": 0}
            )
            row["cells"] += 1
            if cell.axes["template"] not in row["templates"]:
                row["templates"].append(cell.axes["template"])
            pairs.append((cell.axes["model"], a))
    edges = [
        {
            "model": e.model,
            "cap": e.cap,
            "attempts": e.attempts,
            "fitted": _edge(e.fitted),
            "failed": _edge(e.failed),
            "bracketed": e.bracketed,
        }
        for e in frontier(pairs)
    ]
    retried = sum(1 for c in cells if any(a.out_of_memory for a in cell_attempts(c)))
    alone = sum(1 for c in cells if c.crashed and c.cause in ("cuda_oom", "killed") and _alone(c))
    return {"attempts": list(attempts.values()), "frontier": edges, "retried": retried, "oom_alone": alone}


def _alone(cell: CellRow) -> bool:
    tried = cell_attempts(cell)
    return bool(tried) and tried[-1].size == 1


def frontier_chart(execs: list[dict[str, Any]], out: Path) -> str | None:
    """Batch size against padded prompt tokens, one panel per template: each attempt that held a cell of
    the template, fitted (circle) or out of memory (cross); dashed, the batch-token totals of the largest
    batch that fitted and the smallest that did not, per model and cap."""
    from runner.report.charts import _plt, _save

    rows = [
        (ex, a) for ex in execs for a in ex["memory"]["attempts"] if a.get("padded_prompt_tokens") is not None
    ]
    if not any(a["outcome"] != FITTED for _, a in rows):
        return None  # nothing ran out of memory: no edge to show
    plt = _plt()
    templates = sorted({t for _, a in rows for t in a["templates"]})
    fig, axes = plt.subplots(
        1, len(templates), figsize=(max(7.0, 4.6 * len(templates)), 4.0), squeeze=False, sharey=True
    )
    widths = [a["padded_prompt_tokens"] for _, a in rows]
    span = [max(1.0, min(widths) * 0.8), max(widths) * 1.2]
    for ax, template in zip(axes[0], templates, strict=True):
        for ei, ex in enumerate(execs):
            mine = [a for e, a in rows if e is ex and template in a["templates"]]
            tag = f" · {ex['run_id'][:8]}" if len(execs) > 1 else ""
            for outcome, marker, colour, label in (
                (True, "o", "#2e8b57", "fitted"),
                (False, "x", "#c0392b", "out of memory"),
            ):
                pts = [a for a in mine if (a["outcome"] == FITTED) == outcome]
                if outcome is False:
                    pts = [a for a in pts if a["outcome"] in ("cuda_oom", "killed")]
                ax.scatter(
                    [a["padded_prompt_tokens"] for a in pts],
                    [a["size"] for a in pts],
                    marker=marker if ei == 0 else ("s" if outcome else "+"),
                    color=colour,
                    s=36,
                    alpha=0.8,
                    label=label + tag,
                )
            for edge in ex["memory"]["frontier"]:
                for key, style in (("fitted", "--"), ("failed", ":")):
                    point = edge[key]
                    if point and point["batch_tokens"]:
                        xs = [span[0] * (span[1] / span[0]) ** (i / 40) for i in range(41)]
                        ax.plot(
                            xs,
                            [point["batch_tokens"] / x for x in xs],
                            style,
                            color="#2e8b57" if key == "fitted" else "#c0392b",
                            linewidth=1,
                            label=f"{'largest fitted' if key == 'fitted' else 'smallest OOM'}: "
                            f"{point['batch_tokens']} tokens ({edge['cap']}){tag}",
                        )
        ax.set_xscale("log")
        ax.set_xlim(*span)
        plain = plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.set_ylim(0, max(a["size"] for _, a in rows) * 1.25 + 0.5)
        ax.set_title(template, fontsize=10)
        ax.set_xlabel("padded prompt tokens")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("batch size")
    fig.suptitle("Memory frontier (batch tokens = batch size x padded prompt tokens)", fontsize=10)
    return _save(fig, out, "frontier.png")
