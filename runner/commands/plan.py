"""List the cells a spec expands into: a table with counts per axis, or one JSON object per line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from runner.commands import add_spec_arguments, whole_number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per cell per line")
    parser.add_argument(
        "--limit", type=whole_number(0), default=200, help="rows shown in the table (default 200)"
    )


def main(args: argparse.Namespace) -> int:
    from runner.spec import counts, expand, load_spec

    exp = load_spec(args.spec, args.overrides)
    cells = expand(exp)
    if args.json:
        out = sys.stdout
        try:
            for c in cells:
                extra = {"repeat": c.repeat, "base": c.base} if c.repeat else {}
                out.write(json.dumps({"id": c.id, **c.axes(), **extra}) + "\n")
            out.flush()
        except BrokenPipeError:
            # `pov plan --json | head` closed the pipe: that is a normal way to stop reading.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at interpreter exit
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{exp.spec.name}: {len(cells)} cells", show_lines=False)
    # Ids must stay whole to be copied into other commands; on a narrow terminal the names give way.
    table.add_column("id", no_wrap=True, min_width=12)
    # The scoring method gets a column only when the spec chose one (else every cell is the notebook's l2).
    cols = ["model", "template", "persona", "pov_set", "k", "question"]
    if any(c.pov_score != "l2" for c in cells) or len(exp.spec.pov_scores) > 1:
        cols.insert(4, "pov_score")
    for col in cols:
        table.add_column(col)
    repeats = exp.spec.matrix.repeat > 1
    if repeats:
        table.add_column("repeat", justify="right")
    for c in cells[: args.limit]:
        values = {**c.axes(), "k": c.k_label}
        table.add_row(c.id, *(str(values[col]) for col in cols), *([str(c.repeat)] if repeats else []))
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
