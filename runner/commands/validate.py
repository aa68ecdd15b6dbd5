"""Check specs and every file they name (questions, POV sets, templates). Exit 0 if all are valid, else 2."""

from __future__ import annotations

import argparse
import sys

from runner.commands import add_spec_arguments
from runner.errors import SpecError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, many=True)


def main(args: argparse.Namespace) -> int:
    from runner.spec import expand, load_spec

    failed = False
    for path in args.specs:
        try:
            exp = load_spec(path, args.overrides)
            cells = expand(exp)
        except SpecError as e:
            sys.stderr.write(f"{e}\n")
            failed = True
            continue
        print(f"{path}: ok ({len(cells)} cells)")
    return 2 if failed else 0
