"""`pov`: a thin shell over the library. Bad input exits 2 with `file:line: path: message`, no traceback."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from runner.errors import RunAborted, UserError

# Each command lives in runner/commands/<name>.py with add_arguments(parser) and main(args) -> int.
# Those modules import only light things at the top, so `pov --help` stays fast.
COMMANDS = {
    "validate": "check specs and every file they name",
    "plan": "list the cells a spec expands into",
    "ingest": "chunk the corpus and store it in Chroma",
    "retrieve": "show the three retrieval stages per question",
    "run": "run every cell of a spec (resumes an unfinished run)",
    "rerun": "run a past run again, naming what changed since",
    "audit": "run a sample of cells again alone: did their answers depend on their batch?",
    "report": "crash rate against prompt complexity, latency, checks",
    "view": "see the answers: every cell in one offline page, two executions side by side",
    "models": "list, fetch or build local models (a real SmolLM2, a tiny random Llama)",
    "serve": "keep generation workers loaded between runs",
}


class _Version(argparse.Action):
    """`--version`, reading the package metadata only when asked (importlib.metadata costs `pov --help`
    a fifth of its start-up)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import runner

        sys.stdout.write(f"pov-runner {runner.__version__}\n")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pov", description="Declarative experiments for point-of-view reranked RAG.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"runner.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args._module.main(args) or 0)
    except (UserError, RunAborted) as e:
        sys.stderr.write(f"{e}\n")
        return e.exit_code
    except BrokenPipeError:
        # `pov ... | head` closed the pipe: not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        # A run's interruption says what it recorded and how to resume (runner.run.RunInterrupted).
        sys.stderr.write(f"{str(e) or 'interrupted'}\n")
        return 130


def entry() -> NoReturn:
    """The `pov` executable: `main`, then `leave`."""
    leave(main())


def leave(code: int) -> NoReturn:
    """Exit with `code` as Python would, less the interpreter's teardown of every imported module (0.1 to
    0.2 s after chromadb and pydantic are in: a tenth of a warm `pov run`). What a normal exit does for
    the program still happens, in the interpreter's order: threading's shutdown (its own exit hooks, such as
    concurrent.futures telling its idle workers to end, then a join of every thread that is not a daemon),
    the atexit handlers (logging's flush, multiprocessing's reaping of its children, temporary folders,
    MLflow, Ray), then stdout and stderr are flushed. What is left is what a kill would skip, which every
    write here already survives (results, caches and stores are written whole or not at all)."""
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first, in every CPython 3
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe has nothing left to say
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
