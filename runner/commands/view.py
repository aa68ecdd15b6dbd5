"""See the answers: every cell of an execution in one offline page, side by side.

SPEC (its latest execution) or --run RUN_ID: writes view.html into --out (default report/<run id>/, beside
`pov report`'s page) and prints its path. A grid of the cells (rows and columns chosen from the axes; by
default questions x template·persona), each with its answer cut into its sections, badges for its output
checks, its latency and tokens, or its crash's cause and stderr. Opening a cell shows the prompt as sent and
the three retrieval stages with rank moves, POV similarities and the chunks the answer reused. Filters by
axis value, check result, crashed only; text search in answers; sorting. --compare RUN_ID puts the same
cells of a second execution beside them, with a word diff of each changed answer. The page holds
everything it shows (no network: it opens from file://); --serve also serves it on 127.0.0.1, for a
machine you reach over ssh. Tracking URI: MLFLOW_TRACKING_URI, else the spec's tracking.uri, else
sqlite:///mlflow.db in the current directory.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from runner.commands import add_execution_arguments, pick_executions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_execution_arguments(parser, "view.html")
    parser.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 until Ctrl-C")
    parser.add_argument("--port", type=int, default=8765, help="port for --serve (0: any free port)")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from runner.report import load_execution, load_views, write_view
    from runner.tracking import Metrics, State, Tags

    console = Console(stderr=True)
    client, run_id, compare = pick_executions(args, "view", console)
    executions = [load_execution(client, run_id)]
    if compare:
        executions.append(load_execution(client, compare))
    for ex in executions:
        total = ex.metrics.get(Metrics.CELLS_TOTAL)
        running = ex.tags.get(Tags.STATE) == State.RUNNING
        if not ex.cells:
            why = " (it is in progress, or was killed before any cell was recorded)" if running else ""
            console.print(
                f"[yellow]note:[/] execution {ex.label} has no finished or crashed cells yet{why}",
                soft_wrap=True,
            )
        elif running:
            recorded = f"{len(ex.cells)}" + (f" of {total:.0f}" if total else "")
            console.print(
                f"[yellow]note:[/] execution {ex.label} is still in progress (or was killed before it finished): "
                f"the page shows the {recorded} cells recorded so far",
                soft_wrap=True,
            )
    out = args.out or Path("report") / (run_id if not compare else f"{run_id}-vs-{compare}")
    views, chunks = load_views(client, executions)
    page = write_view(views, chunks, out, "pov view: " + " vs ".join(ex.label for ex in executions))
    print(page)
    if args.serve:
        serve(page, args.port)
    return 0


def serve(page: Path, port: int) -> None:
    """The page's folder over HTTP on 127.0.0.1 (only this machine; forward the port to reach it)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(page.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{page.name}"
        print(f"serving {url} (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            httpd.serve_forever()
