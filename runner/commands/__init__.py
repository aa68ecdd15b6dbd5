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


def gpu_list(text: str) -> list[int]:
    """`--gpus 0,1` as a list of indices (argparse reports a bad one with exit 2)."""
    try:
        gpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1, got {text!r}") from None
    if any(g < 0 for g in gpus):
        raise argparse.ArgumentTypeError(f"GPU indices are 0 or more, got {text!r}")
    return gpus
