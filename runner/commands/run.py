"""Run every cell of a spec: retrieval (cached), prompts, generation. Resumes the latest unfinished run of the
same spec unless --fresh; crashed cells are data (recorded with their cause), not a failure of the command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.commands import add_spec_arguments, gpu_list

if TYPE_CHECKING:
    from runner.spec import Experiment


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of cells >= 1, got {text!r}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument(
        "--no-track",
        action="store_true",
        help="record nothing in MLflow (the run folder's results.jsonl is still written)",
    )
    parser.add_argument("--fresh", action="store_true", help="start a new execution rather than resume one")
    parser.add_argument(
        "--retry-crashed", action="store_true", help="run again the cells that crashed before"
    )
    parser.add_argument(
        "--executor",
        choices=["local", "ray", "serve"],
        help="where generation runs (default: the spec's; a running `pov serve` when the spec says local)",
    )
    parser.add_argument("--address", metavar="ADDR", help="Ray cluster address (auto, ray://host:10001)")
    parser.add_argument(
        "--gpus", type=gpu_list, metavar="0,1", help="GPU indices to use (default: all visible)"
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="run at most N of the cells not yet recorded (to try a spec); a later run continues the same "
        "execution with the rest",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar; print only the summary")


def _print_answers(out: Any, results: Path) -> None:
    """The checks' pass rates per template · persona, and the start of one answer."""
    from runner.run import answer_excerpt, check_table, finished_rows

    rows = finished_rows(results)
    table = check_table(rows)
    if table.checks:
        # Plain columns, not a rich Table: a log or a narrow terminal would wrap its cells mid-word.
        cells = [
            [group, *(f"{counts[c][0]}/{counts[c][1]}" if c in counts else "-" for c in table.checks)]
            for group, counts in table.rows
        ]
        head = ["template · persona", *table.checks]
        widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
        out.print("output checks passed (cells passed / cells checked):")
        for r in [head, *cells]:
            out.print(
                "  "
                + "  ".join(
                    v.ljust(w) if i == 0 else v.rjust(w)
                    for i, (v, w) in enumerate(zip(r, widths, strict=True))
                )
            )
    shown = answer_excerpt(rows)
    if shown is not None:
        cell = shown.cell
        where = ", ".join(f"{k}={cell.get(k)}" for k in ("template", "persona", "pov_set", "question"))
        failed = f"; failed: {', '.join(shown.failed)}" if shown.failed else "; passed every check"
        out.print(f"one answer ({where}{failed}):")
        out.print(f"  {shown.text}")


def _duration(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}m {s:04.1f}s" if m else f"{s:.1f}s"


def main(args: argparse.Namespace) -> int:
    from runner.run import execution_lock
    from runner.spec import load_spec

    overrides = list(args.overrides)
    # Through --set, so that the spec's own validation checks these too (and they never change its hash).
    if args.executor:
        overrides.append(f"executor.kind={args.executor}")
    if args.address:
        overrides.append(f"executor.address={json.dumps(args.address)}")
    if args.gpus is not None:
        overrides.append(f"executor.gpus={json.dumps(args.gpus)}")
    exp = load_spec(args.spec, overrides)
    # Taken before the engine and its libraries are imported, so a second run of the spec is refused at once
    # (run_experiment takes it again, a no-op here, for its other callers).
    with execution_lock(exp):
        return _run(args, exp)


def _run(args: argparse.Namespace, exp: Experiment) -> int:
    from rich.console import Console

    from runner.run import run_experiment
    from runner.spec import expand
    from runner.tracking import make_tracker

    # Every cell, whatever --limit says: they are the execution's identity, and a later run continues it.
    cells = expand(exp)
    executor = None
    if args.executor == "local":
        from runner.generation import make_executor

        # Named on the command line: local workers even when a `pov serve` is running.
        executor = make_executor(exp.spec, auto_serve=False)
    tracker = make_tracker(exp, args.no_track)
    err = Console(stderr=True, quiet=args.quiet)
    summary = run_experiment(
        exp,
        cells,
        tracker,
        executor=executor,
        console=err,
        fresh=args.fresh,
        retry_crashed=args.retry_crashed,
        quiet=args.quiet,
        limit=args.limit,
    )
    # No markup: error lines and paths may hold [brackets].
    out = Console(highlight=False, soft_wrap=True, markup=False)
    out.print(
        f"{exp.spec.name}: {summary.cells_total - summary.cells_deferred} cells: {summary.finished} finished, "
        f"{summary.crashed} crashed, {summary.cells_skipped} already done"
    )
    if summary.crashed:
        out.print(f"{summary.crashed} crashed: {summary.top_crashes()}")
    if summary.cells_deferred:
        out.print(
            f"{summary.cells_deferred} more cell{'s' if summary.cells_deferred > 1 else ''} not run "
            f"(--limit {args.limit}): the same command runs the next ones, without --limit all of them"
        )
    out.print(
        f"wall time {_duration(summary.wall_time_s)} (inside generate {_duration(summary.generate_time_s)})"
    )
    if summary.cells_run == 0 and summary.cells_skipped and not summary.cells_deferred:
        out.print(
            "nothing to do: every cell is recorded in this spec's latest execution "
            "(--retry-crashed runs its crashed cells again, --fresh starts a new execution)"
        )
    if summary.cells_run and not args.quiet:
        _print_answers(out, summary.results_path)
    out.print(f"results: {summary.results_path}")
    run_id = tracker.run_id
    if run_id:
        experiment = exp.spec.tracking.experiment or exp.spec.name
        out.print(f"MLflow: run {run_id} in experiment {experiment!r}")
        out.print(
            f"next: pov report {args.spec}   (tables and charts of this execution; `mlflow ui` to browse)"
        )
    common = summary.common_crash()
    if common:
        cause, line = common
        retry = f"`pov run {args.spec} --retry-crashed`" if run_id else "the same command"
        # Not a crash of some cells but of the run itself (a model that cannot load, say): not a success.
        sys.stderr.write(
            f"pov: every cell crashed the same way ({cause}: {line}); fix that, then {retry} runs them again\n"
        )
        return 1
    return 0
