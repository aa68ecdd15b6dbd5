"""The run directory's results file: one JSON object per cell per line, written whatever the tracker is.

`<state_dir>/runs/<spec name>/<execution id>/results.jsonl`. Lines are appended batch by batch and flushed
to disk, so a killed run keeps every result it reported. A resumed or retried execution appends to the
same file; when a cell appears more than once, its last line is its current result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.run.results import CellResult
    from runner.spec import Experiment


def run_dir(exp: Experiment, execution_id: str) -> Path:
    return exp.state_dir / "runs" / exp.spec.name / execution_id


class JsonlSink:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "results.jsonl"
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, results: list[CellResult]) -> None:
        if not results:
            return
        from runner.redaction import redact, secret_values

        secrets = secret_values()  # what MLflow gets is redacted; this file must not hold more
        lines = "".join(
            redact(json.dumps(r.to_dict(), default=str, ensure_ascii=False), secrets) + "\n" for r in results
        )
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self, summary: dict[str, Any]) -> None:
        tmp = self.dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.dir / "summary.json")


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The current result per cell id (the last line wins)."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                out[d["cell"]["id"]] = d
    return out
