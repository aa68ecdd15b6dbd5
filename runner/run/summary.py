"""What a run did, as `pov run` prints it and the tracker records it (`summary.json`, the parent run's
metrics)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.generation import JobResult

DEFAULT_CAUSE = "exception"
"""The cause of a crash that names none (the collector counts it the same way)."""
ERROR_LINE_CHARS = 300


def first_line(error: str | None) -> str:
    """The first non-blank line of an error, cut short: what names a crash's cause in one line."""
    for line in (error or "").splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= ERROR_LINE_CHARS else line[: ERROR_LINE_CHARS - 1] + "…"
    return "(no error message)"


@dataclass
class RunSummary:
    spec_name: str
    run_id: str
    run_dir: Path
    results_path: Path
    cells_total: int
    """Every cell of the execution, whatever this run was limited to."""
    cells_skipped: int = 0
    """Cells recorded before this run (kept as they are)."""
    cells_deferred: int = 0
    """Cells neither recorded nor run: left for a later run by `limit`."""
    finished: int = 0
    crashed: int = 0
    crashed_by_cause: dict[str, int] = field(default_factory=dict)
    crash_lines: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(cause, first line of the error) -> cells: what `pov run` names when cells crash."""
    wall_time_s: float = 0.0
    generate_time_s: float = 0.0
    """Time spent inside the backends' generate calls (each batch counted once)."""
    state: str = "running"
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each step: manifest, models, retrieval, prompts, generation (which includes the
    workers' start and model load)."""

    @property
    def cells_run(self) -> int:
        return self.finished + self.crashed

    def note_crashes(self, results: Iterable[JobResult]) -> None:
        for r in results:
            if r.status != "finished":
                self.crash_lines[(r.cause or DEFAULT_CAUSE, first_line(r.error))] += 1

    def top_crashes(self, n: int = 3) -> str:
        """`exception 16 — OSError: model folder not found: /x; timeout 2 — ...`: the most frequent causes
        with their first error line."""
        top = self.crash_lines.most_common(n)
        text = "; ".join(f"{cause} {cells} — {line}" for (cause, line), cells in top)
        more = sum(self.crash_lines.values()) - sum(cells for _, cells in top)
        return f"{text}; {more} more" if more else text

    def common_crash(self) -> tuple[str, str] | None:
        """(cause, first error line) when every cell this run ran crashed with one cause: something wrong
        with the run itself (a model that cannot load, say) rather than with some cells."""
        causes = {cause for cause, _ in self.crash_lines}
        if self.finished or not self.crashed or len(causes) != 1:
            return None
        (cause, line), _ = self.crash_lines.most_common(1)[0]
        return cause, line

    def interrupted_message(self, tracked: bool) -> str:
        """What Ctrl-C leaves behind, and how to go on."""
        if not tracked:
            return (
                f"interrupted: {self.cells_run} of {self.cells_total} cells written to {self.results_path} "
                "(not tracked: running again starts over)"
            )
        recorded = self.cells_skipped + self.cells_run
        return f"interrupted: {recorded} of {self.cells_total} cells recorded; run the same command to resume"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cells_total": self.cells_total,
            "cells_skipped": self.cells_skipped,
            "cells_deferred": self.cells_deferred,
            "cells_run": self.cells_run,
            "cells_finished": self.finished,
            "cells_crashed": self.crashed,
            "wall_time_s": self.wall_time_s,
            "generate_time_s": self.generate_time_s,
            "state": self.state,
            "results_path": str(self.results_path),
            "top_crashes": [
                {"cause": cause, "cells": cells, "error": line}
                for (cause, line), cells in self.crash_lines.most_common(5)
            ],
        }
        out.update({f"crashed.{cause}": n for cause, n in sorted(self.crashed_by_cause.items())})
        out.update({f"phase.{name}_s": secs for name, secs in self.phases.items()})
        return out
