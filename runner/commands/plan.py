"""List the cells a spec expands into: a table with counts per axis, or one JSON object per line."""

from __future__ import annotations

import argparse
import json
import sys

from runner.commands import add_spec_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per cell per line")
    parser.add_argument("--limit", type=int, default=200, help="rows shown in the table (default 200)")


def main(args: argparse.Namespace) -> int:
    from runner.loader import load_spec
    from runner.matrix import counts, expand

    exp = load_spec(args.spec, args.overrides)
    cells = expand(exp)
    if args.json:
        out = sys.stdout
        for c in cells:
            out.write(json.dumps({"id": c.id, **c.axes()}) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{exp.spec.name}: {len(cells)} cells", show_lines=False)
    for col in ("id", "model", "template", "persona", "pov_set", "k", "question"):
        table.add_column(col)
    for c in cells[: args.limit]:
        table.add_row(c.id, c.model, c.template, c.persona, c.pov_set, c.k_label, c.question)
    console.print(table)
    if len(cells) > args.limit:
        console.print(f"... {len(cells) - args.limit} more (--limit N, or --json for all)")
    per_axis = counts(cells)
    summary = Table(title="cells per axis value")
    summary.add_column("axis")
    summary.add_column("values")
    for axis, values in per_axis.items():
        summary.add_row(axis, ", ".join(f"{v}: {n}" for v, n in values.items()))
    console.print(summary)
    return 0
