"""(placeholder: being built)"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?")


def main(args: argparse.Namespace) -> int:
    raise SystemExit("pov ingest: not built yet")
