"""Does a recorded answer depend on its batch? Generates a sample of an execution's finished cells again,
each alone (or in batches of --batch-size), from their stored prompts and the execution's stored spec, and
says for each whether the answer is identical or changed, with a word diff of the change. Tags each audited
cell `pov.batch_sensitive` (the report flags the changed ones) and stores the findings as the execution's
`audit/<time>.json`, unless --no-record. Changed answers are findings, not failures: the exit status is 0.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from runner.commands import whole_number

if TYPE_CHECKING:
    from runner.tracking import AuditOutcome


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_id",
        metavar="RUN_ID",
        help="an execution's run id, or a unique prefix of it (6 characters or more)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--sample",
        type=whole_number(1),
        default=10,
        metavar="N",
        help="cells to audit (default 10), chosen by --seed",
    )
    size.add_argument("--all", action="store_true", help="audit every finished cell")
    parser.add_argument(
        "--batch-size",
        type=whole_number(1),
        default=1,
        metavar="B",
        help="run the sample in batches of B (default 1: each cell alone)",
    )
    parser.add_argument("--seed", type=int, default=0, help="which cells the sample takes (default 0)")
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store holding the run (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument("--no-record", action="store_true", help="change nothing in MLflow")
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON object")


def main(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from runner.tracking import audit

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    outcome = audit(
        args.run_id,
        sample=None if args.all else args.sample,
        batch_size=args.batch_size,
        seed=args.seed,
        tracking_uri=args.tracking_uri,
        record=not args.no_record,
        say=say,
    )
    if args.json:
        print(json.dumps(asdict(outcome), ensure_ascii=False))
    else:
        print_outcome(outcome)
    return 0


def print_outcome(outcome: AuditOutcome) -> None:
    """One line per audited cell (its verdict, and below it a changed answer's word diff or a crash's
    error), then the counts."""
    from runner.tracking.audit import CHANGED, CRASHED, IDENTICAL

    for c in outcome.cells:
        print(
            f"{c.verdict:<9} {c.cell_id}  {c.template} · {c.question}  (batch {c.batch_size} -> {outcome.batch_size})"
        )
        if c.verdict == CHANGED:
            print(f"    {c.diff}")
        elif c.verdict == CRASHED:
            print(f"    {c.error}")
    changed, same, crashed = outcome.count(CHANGED), outcome.count(IDENTICAL), outcome.count(CRASHED)
    print(
        f"audit of {outcome.run_id}: {changed} of {len(outcome.cells)} answers changed, {same} identical"
        + (f", {crashed} crashed" if crashed else "")
        + f" (batch size {outcome.batch_size})"
    )
    if outcome.artifact:
        print(f"recorded: pov.batch_sensitive on each audited cell; {outcome.artifact} on the execution")
