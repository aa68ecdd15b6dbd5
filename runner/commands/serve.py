"""Keep generation workers loaded between runs, as a notebook keeps its model: while this runs, `pov run`
in the same project hands its generation to these workers and skips the imports and the model load.

    pov serve experiments/x.yaml &     # loads x's models now, then waits for runs
    pov run experiments/x.yaml         # uses the loaded workers (--executor local does not)
    pov serve --status | --stop

It serves one run at a time, frees its GPUs when stopped (Ctrl-C, SIGTERM, --stop) and stops by itself
after --idle-timeout minutes without a run. A crash in a worker is recorded as in a local run, and the
worker is restarted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from runner.commands import add_spec_arguments, gpu_list


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected minutes > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(
        parser, optional_help="a spec whose models to load now (else the first run loads its own)"
    )
    parser.add_argument(
        "--gpus", type=gpu_list, metavar="0,1", help="GPU indices to serve (default: all visible)"
    )
    parser.add_argument(
        "--idle-timeout", type=_minutes, default=60.0, metavar="MIN", help="stop after MIN idle minutes (60)"
    )
    parser.add_argument(
        "--project", type=Path, metavar="DIR", help="project root (default: the spec's, or .)"
    )
    parser.add_argument("--status", action="store_true", help="show the running server and exit")
    parser.add_argument("--stop", action="store_true", help="stop the running server and exit")


def _state_dir(args: argparse.Namespace) -> tuple[Path, Any]:
    from runner.spec import load_spec

    exp = load_spec(args.spec, list(args.overrides)) if args.spec else None
    if args.project is not None:
        root = args.project.resolve()
    elif exp is not None:
        root = exp.root
    else:
        from runner.spec import project_root

        root = project_root(Path.cwd() / "SPEC")  # as a spec here would find it
    return (exp.state_dir if exp is not None and args.project is None else root / ".pov"), exp


def main(args: argparse.Namespace) -> int:
    from runner import generation

    state_dir, exp = _state_dir(args)
    if args.status or args.stop:
        answer = generation.request(state_dir, ("shutdown",) if args.stop else ("status",))
        if answer is None:
            print(f"no pov serve is running for {state_dir.parent}")
            return 1
        if args.stop:
            print("pov serve: stopped")
        else:
            print(json.dumps(answer[1], indent=2))
        return 0
    server = generation.Server(state_dir, args.gpus, args.idle_timeout * 60)

    def ready(srv: generation.Server) -> None:
        if exp is not None:
            models = {
                key: generation.absolute_model(generation.resolve_model(exp, m))
                for key, m in exp.spec.models.items()
            }
            srv.preload(models, exp.spec.limits)
        slots = ", ".join(device for device, _ in srv.executor.slots())
        print(
            f"pov serve: ready, pid {srv.status()['pid']} on {slots}, for {state_dir.parent} "
            f"(stops after {args.idle_timeout:g} idle minutes; Ctrl-C or `pov serve --stop` to stop)",
            flush=True,
        )

    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve(on_ready=ready)
    print(f"pov serve: stopped after {time.monotonic() - started:.0f} s and {server.runs} run(s)")
    return 0
