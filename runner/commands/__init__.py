"""One module per `pov` command: `add_arguments(parser)` and `main(args) -> int`."""

from __future__ import annotations

import argparse


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
