"""Errors that the CLI turns into a clean message and exit code 2 (bad input), never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem in a user's input, located as precisely as we can."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.col else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class UserError(Exception):
    """Bad input from the user (a file, an argument). The CLI prints it and exits 2."""

    exit_code = 2


class SpecError(UserError):
    """Every problem found in a spec and the files it names, one `file:line:col: path: message` each."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(set(problems), key=lambda p: (p.file, p.line, p.col, p.path, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class RunAborted(Exception):
    """A run stopped by something outside it (its `pov serve` ended): the CLI prints the message, no traceback,
    and exits 1; the cells not recorded are resumed by the next `pov run`."""

    exit_code = 1


def did_you_mean(value: Any, choices: Sequence[str]) -> str:
    """A hint for a misspelt name: the closest of `choices`, else the list of them."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (declared: {', '.join(choices) or 'none'})"
