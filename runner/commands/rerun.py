"""Run a past execution again from what MLflow stored (its resolved spec, templates and manifest). Prints
each thing that changed since (git commit and dirty state, package versions, corpus files, models, GPU),
then runs every cell as a new execution tagged `pov.rerun_of=RUN_ID` and says how many cells gave the
same output and the same retrieval rankings as before. A killed rerun continues when the same command
is given again."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_id",
        metavar="RUN_ID",
        help="MLflow run id of a past execution (a parent run), or a unique prefix of it (6 characters or "
        "more: the report shows 8)",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store holding the run (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; "
        "a sqlite file must exist)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="start a new rerun rather than resume a killed one"
    )
    parser.add_argument(
        "--retry-crashed", action="store_true", help="run again the cells that crashed in the rerun"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from runner.tracking import rerun

    err = Console(stderr=True, quiet=args.quiet)
    # Plain print: one line per drift, never re-wrapped, so it can be grepped.
    outcome = rerun(
        args.run_id,
        tracking_uri=args.tracking_uri,
        fresh=args.fresh,
        retry_crashed=args.retry_crashed,
        console=err,
        say=lambda line: print(line, flush=True),
    )
    summary = outcome.summary
    causes = ", ".join(f"{c} {n}" for c, n in sorted(summary.crashed_by_cause.items()))
    print(
        f"{summary.finished} finished, {summary.crashed} crashed"
        f"{f' ({causes})' if causes else ''}, {summary.cells_skipped} already done"
    )
    if summary.crashed:
        print(f"{summary.crashed} crashed: {summary.top_crashes()}")
    common = summary.common_crash()
    if common:
        cause, line = common
        # As in `pov run`: every cell crashing the same way is a failure of the run, not data about cells.
        sys.stderr.write(f"pov: every cell crashed the same way ({cause}: {line})\n")
        return 1
    return 0
