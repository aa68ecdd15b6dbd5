"""One module per `pov` command: `add_arguments(parser)` and `main(args) -> int`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_spec_arguments(
    parser: argparse.ArgumentParser, many: bool = False, optional_help: str | None = None
) -> None:
    """SPEC (one, several with `many`, or an optional one described by `optional_help`) and `--set`."""
    if many:
        parser.add_argument("specs", nargs="+", metavar="SPEC", help="experiment YAML file(s)")
    elif optional_help:
        parser.add_argument("spec", nargs="?", metavar="SPEC", help=optional_help)
    else:
        parser.add_argument("spec", metavar="SPEC", help="experiment YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, VALUE parsed as YAML (repeatable), "
        "e.g. --set matrix.persona=[professor]",
    )


def gpu_list(text: str) -> list[int]:
    """`--gpus 0,1` as a list of indices (argparse reports a bad one with exit 2)."""
    try:
        gpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1, got {text!r}") from None
    if any(g < 0 for g in gpus):
        raise argparse.ArgumentTypeError(f"GPU indices are 0 or more, got {text!r}")
    return gpus


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse `type` for a count of at least `minimum` (argparse reports a bad one with exit 2)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(
                f"{n} is negative" if minimum == 0 else f"{n} is not {minimum} or more"
            )
        return n

    return parse


def add_execution_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """SPEC (its latest execution) or --run RUN_ID, --compare RUN_ID, --out DIR: `pov report` and `pov view`."""
    add_spec_arguments(parser, optional_help="experiment YAML file (its latest execution)")
    parser.add_argument(
        "--run",
        metavar="RUN_ID",
        help="MLflow run id of an execution, or a unique prefix of it (6 characters or more), instead of SPEC",
    )
    parser.add_argument(
        "--compare", metavar="RUN_ID", help="a second execution (run id or prefix) to put side by side"
    )
    parser.add_argument(
        "--out", metavar="DIR", type=Path, help=f"output folder (default report/<run id>/) for {what}"
    )


def pick_executions(args: argparse.Namespace, command: str, console: Any) -> tuple[Any, str, str | None]:
    """(MLflow client, run id, run id to compare or None) for SPEC or --run and --compare; a UserError for
    anything that names no execution of this store."""
    from runner.errors import UserError
    from runner.tracking import make_client, resolve_run_id, resolve_tracking_uri

    if bool(args.spec) == bool(args.run):
        raise UserError(f"pov {command}: give either SPEC or --run RUN_ID (one of them)")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f"pov {command}: --out {args.out} is a file; name a folder")
    if args.spec:
        from runner.report import latest_execution
        from runner.spec import load_spec

        exp = load_spec(args.spec, args.overrides)
        client = make_client(resolve_tracking_uri(exp.spec.tracking.uri), must_exist=True)
        run_id, same_hash = latest_execution(client, exp.spec.name, exp.spec_hash)
        if not same_hash:
            console.print(
                f"[yellow]note:[/] no execution of {exp.spec.name} has spec hash {exp.spec_hash}; "
                f"using the latest execution of that name ({run_id})"
            )
    else:
        client = make_client(resolve_tracking_uri(), must_exist=True)
        run_id = resolve_run_id(client, args.run)
    compare = resolve_run_id(client, args.compare) if args.compare else None
    if compare == run_id:
        raise UserError(f"pov {command}: --compare names the same run as --run")
    return client, run_id, compare
