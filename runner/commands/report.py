"""Crash rate against prompt complexity, latency, GPU memory and output checks of an execution.

Reads the runs back from MLflow (SPEC: the latest execution of that spec; or --run RUN_ID), writes
report.html with its PNG charts, report.json and view.html (`pov view`'s page of the same cells, which each
table row links to) into --out (default report/<run id>/), prints the key tables, and logs the folder as the
`report` artifact of the execution's parent run. --compare RUN_ID puts a
second execution beside the first. A run id may be shortened to a unique prefix (the report shows 8
characters). Tracking URI: MLFLOW_TRACKING_URI, else the spec's tracking.uri, else
sqlite:///mlflow.db in the current directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runner.commands import add_execution_arguments, pick_executions
from runner.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_execution_arguments(parser, "report.html, its charts, report.json and view.html")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the MLflow run")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from runner.report import build, load_execution, load_views, write_report, write_view
    from runner.tracking import Artifacts

    console = Console()
    client, run_id, compare = pick_executions(args, "report", console)
    executions = [load_execution(client, run_id)]
    if compare:
        executions.append(load_execution(client, compare))
    for ex in executions:
        if not ex.cells:
            raise UserError(f"execution {ex.label} has no finished or crashed cells to report on")

    out = args.out or Path("report") / (run_id if not compare else f"{run_id}-vs-{compare}")
    data = build(executions)
    title = "pov report: " + " vs ".join(ex.label for ex in executions)
    page = write_report(data, out, title)
    # The report's rows link to the cells behind them: the viewer of the same executions, beside it.
    views, chunks = load_views(client, executions)
    write_view(views, chunks, out, "pov view: " + " vs ".join(ex.label for ex in executions))
    print_tables(console, data)
    console.print(f"report: [bold]{page}[/]", soft_wrap=True)
    if not args.no_log:
        artifact_path = Artifacts.REPORT if not compare else Artifacts.report_vs(compare)
        client.log_artifacts(run_id, str(out), artifact_path=artifact_path)
        console.print(f"logged as artifact [bold]{artifact_path}/[/] of run {run_id}")
    return 0


def print_tables(console: Any, data: dict[str, Any]) -> None:
    from rich.table import Table

    from runner.report import CHART_AXES, PERFORMANCE_AXES, TITLES, fmt, table_rows, values_in

    execs = data["executions"]
    for ex in execs:
        ov = ex["overall"]
        ignored = ", ".join(f"{k} {v}" for k, v in sorted(ex["ignored"].items())) or "none"
        console.print(
            f"[bold]{ex['label']}[/] spec {ex['spec_name']} ({ex['state']}): {ov['n']} cells, "
            f"{ov['k']} crashed = {fmt(ov['rate'], 'pct')} [{fmt(ov['lo'], 'pct')} – "
            f"{fmt(ov['hi'], 'pct')}]; child runs ignored: {ignored}"
        )

    def rates(title: str, rows_of: Any, what: str = "crashed") -> None:
        table = Table(title=title)
        table.add_column("")
        for ex in execs:
            tag = f" · {ex['run_id'][:8]}" if len(execs) > 1 else ""
            table.add_column(f"{what}/cells  rate [95% CI]{tag}", justify="right")
        for v in values_in(execs, rows_of):
            row = [v]
            for ex in execs:
                r = next((r for r in rows_of(ex) if r["value"] == v), None)
                row.append(
                    f"{r['k']}/{r['n']}  {fmt(r['rate'], 'pct')} [{fmt(r['lo'], 'pct')}–"
                    f"{fmt(r['hi'], 'pct')}]"
                    if r
                    else "–"
                )
            table.add_row(*row)
        console.print(table)

    for axis in CHART_AXES:
        rates(f"crash rate by {TITLES[axis]}", table_rows("crash_rate", axis))
    causes = sorted({c for ex in execs for per in ex["crash_causes"].values() for c in per})
    if causes:
        table = Table(title="crash causes")
        table.add_column("")
        for ex in execs:
            for c in causes:
                table.add_column(c + (f" {ex['run_id'][:8]}" if len(execs) > 1 else ""), justify="right")
        groups = list(dict.fromkeys(g for ex in execs for g in ex["crash_causes"]))
        for g in groups:
            table.add_row(g, *[str(ex["crash_causes"].get(g, {}).get(c, 0)) for ex in execs for c in causes])
        console.print(table)
    table = Table(title="latency and peak GPU memory (finished cells)")
    for col in ("", "by", "value", "n", "latency is", "p50 s", "p95 s", "GPU max MiB"):
        table.add_column(col, justify="left" if col in ("", "by", "value", "latency is") else "right")
    for ex in execs:
        for axis in PERFORMANCE_AXES:
            for r in ex["performance"][axis]:
                table.add_row(
                    ex["run_id"][:8],
                    axis,
                    r["value"],
                    str(r["n"]),
                    r.get("latency_scope") or "–",
                    fmt(r["latency_p50"]),
                    fmt(r["latency_p95"]),
                    fmt(r["gpu_peak_mb_max"]),
                )
    console.print(table)
    rates("check pass rates", lambda ex: [{**r, "value": r["check"]} for r in ex["checks"]], "passed")
    for axis in ("template", "persona"):
        rates(
            f"check pass rates by {axis}",
            lambda ex, axis=axis: [
                {**r, "value": f"{r['check']} · {r['value']}"} for r in ex[f"checks_by_{axis}"]
            ],
            "passed",
        )
    print_frontier(console, execs)
    print_retrieval(console, execs)


def print_frontier(console: Any, execs: list[dict[str, Any]]) -> None:
    """Where each model stopped fitting under each memory cap, when some batch ran out of memory."""
    from rich.table import Table

    edges = [(ex, e) for ex in execs for e in ex.get("memory", {}).get("frontier", []) if e["failed"]]
    if not edges:
        return

    def point(p: dict[str, Any] | None) -> str:
        return "–" if not p else f"{p['size']} x {p['padded_prompt_tokens']} = {p['batch_tokens']}"

    table = Table(title="memory frontier (batch size x padded prompt tokens = batch tokens)")
    for col in ("", "model", "cap", "largest fitted", "smallest out of memory"):
        table.add_column(col)
    for ex, e in edges:
        table.add_row(ex["run_id"][:8], e["model"], e["cap"], point(e["fitted"]), point(e["failed"]))
    console.print(table)


def print_retrieval(console: Any, execs: list[dict[str, Any]]) -> None:
    """The retrieval table by scoring method and POV set (runner.report.retrieval), per execution."""
    from rich.table import Table

    from runner.report import RETRIEVAL_COLUMNS, fmt

    for ex in execs:
        if not ex.get("retrieval"):
            continue
        table = Table(
            title="retrieval by scoring method and POV set"
            + (f" · {ex['run_id'][:8]}" if len(execs) > 1 else "")
        )
        table.add_column("method · POV set")
        table.add_column("n", justify="right")
        for _, title, _ in RETRIEVAL_COLUMNS:
            table.add_column(title, justify="right")
        for r in ex["retrieval"]:
            table.add_row(r["value"], str(r["n"]), *(fmt(r[key], kind) for key, _, kind in RETRIEVAL_COLUMNS))
        console.print(table)
