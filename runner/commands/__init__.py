"""One module per `pov` command: `add_arguments(parser)` and `main(args) -> int`."""

from __future__ import annotations

import argparse


def add_spec_arguments(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument("specs", nargs="+", metavar="SPEC", help="experiment YAML file(s)")
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
