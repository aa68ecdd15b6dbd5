"""The crash run's figures, read back from its results.jsonl and `pov report`'s report.json: crash rate by
template (the report's Wilson intervals), causes, peak memory per batch, and the memory frontier (batch rows x
padded prompt tokens that fit, and the prompts that did not fit even alone).

Batches are the cells that share a worker's start and end stamps. A batch that crashed leaves no record of
its own (its cells are retried one at a time, and only those runs are recorded): it shows up as cells run
alone in a run whose batch_size is larger. Those that finished alone fit alone; those that crashed alone
with `cuda_oom` are past the frontier whatever the batch.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def read_rows(results: Path) -> list[dict[str, Any]]:
    """The last record of each cell (a resumed run appends)."""
    latest: dict[str, dict[str, Any]] = {}
    for line in results.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            latest[row["cell"]["id"]] = row
    return list(latest.values())


def batches(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "finished" and r.get("started_at") is not None:
            groups[(r["started_at"], r["ended_at"])].append(r)
    out = []
    for (started, _), cells in sorted(groups.items(), key=lambda kv: kv[0][0]):
        width = max(c["metrics"].get("prompt_tokens", 0.0) for c in cells)
        m = cells[0]["metrics"]
        out.append(
            {
                "started_at": started,
                "rows": len(cells),
                "templates": dict(Counter(c["cell"]["template"] for c in cells)),
                "padded_prompt_tokens": int(width * len(cells)),
                "longest_prompt": int(width),
                "new_tokens": int(sum(c["metrics"].get("new_tokens", 0.0) for c in cells)),
                "peak_allocated_mb": round(m.get("gpu_peak_allocated_mb", 0.0), 1),
                "peak_reserved_mb": round(m.get("gpu_peak_reserved_mb", 0.0), 1),
                "latency_s": round(m.get("batch_latency_s", 0.0), 2),
            }
        )
    return out


def frontier(rows: list[dict[str, Any]], done: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Per batch rows: the largest padded prompt tokens that fit; and the cells that did not fit alone."""
    fit: dict[int, int] = {}
    for b in done:
        fit[b["rows"]] = max(fit.get(b["rows"], 0), b["padded_prompt_tokens"])
    alone_crashed = [
        {
            "template": r["cell"]["template"],
            "prompt_tokens": int(r["metrics"].get("prompt_tokens", 0)),
            "cause": r.get("cause"),
        }
        for r in rows
        if r["status"] == "crashed"
    ]
    isolated_ok = [
        r
        for r in rows
        if r["status"] == "finished" and batch_size > 1 and r["metrics"].get("batch_size", batch_size) == 1
    ]
    return {
        "fit_max_padded_prompt_tokens_by_rows": dict(sorted(fit.items())),
        "crashed_cells": alone_crashed,
        "cells_that_fit_only_alone": len(isolated_ok),
    }


def summarize(results: Path, report_json: Path | None, batch_size: int) -> dict[str, Any]:
    rows = read_rows(results)
    done = batches(rows)
    causes = Counter(r.get("cause") or "unknown" for r in rows if r["status"] == "crashed")
    summary: dict[str, Any] = {
        "cells": len(rows),
        "finished": sum(r["status"] == "finished" for r in rows),
        "crashed": sum(r["status"] == "crashed" for r in rows),
        "causes": dict(causes),
        "batches": done,
        "frontier": frontier(rows, done, batch_size),
    }
    if report_json is not None and report_json.is_file():
        report = json.loads(report_json.read_text())
        summary["crash_by_template"] = find_table(report, "template")
    return summary


def find_table(report: dict[str, Any], axis: str) -> Any:
    """The report's crash-rate rows for `axis` (value, n, k, rate, lo, hi), of its latest execution."""
    executions = report.get("executions") or [{}]
    return (executions[-1].get("crash_rate") or {}).get(axis)


def print_summary(s: dict[str, Any]) -> None:
    line = "=" * 100
    print(
        f"\n{line}\ncrash run: {s['finished']} finished, {s['crashed']} crashed of {s['cells']} cells; causes {s['causes']}"
    )
    for r in s.get("crash_by_template") or []:
        print(
            f"  crash rate {r['value']:<18} {r['k']:>4}/{r['n']:<4} {100 * r['rate']:5.1f}% "
            f"[{100 * r['lo']:.1f}%-{100 * r['hi']:.1f}%] (Wilson 95%)"
        )
    print(
        f"{'batch':>6}{'rows':>6}{'longest prompt':>16}{'padded tokens':>15}{'peak alloc MiB':>16}{'peak reserved MiB':>19}{'s':>8}  templates"
    )
    for i, b in enumerate(s["batches"]):
        print(
            f"{i:>6}{b['rows']:>6}{b['longest_prompt']:>16}{b['padded_prompt_tokens']:>15}{b['peak_allocated_mb']:>16.0f}"
            f"{b['peak_reserved_mb']:>19.0f}{b['latency_s']:>8.1f}  {b['templates']}"
        )
    f = s["frontier"]
    print(f"fits (rows: largest padded prompt tokens): {f['fit_max_padded_prompt_tokens_by_rows']}")
    print(
        f"cells that fit only alone: {f['cells_that_fit_only_alone']}; crashed even alone: {len(f['crashed_cells'])}"
    )
    print(line)
