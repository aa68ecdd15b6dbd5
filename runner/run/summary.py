"""What a run did, as `pov run` prints it and the tracker records it (`summary.json`, the parent run's
metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunSummary:
    spec_name: str
    run_id: str
    run_dir: Path
    results_path: Path
    cells_total: int
    cells_skipped: int = 0
    finished: int = 0
    crashed: int = 0
    crashed_by_cause: dict[str, int] = field(default_factory=dict)
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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cells_total": self.cells_total,
            "cells_skipped": self.cells_skipped,
            "cells_run": self.cells_run,
            "cells_finished": self.finished,
            "cells_crashed": self.crashed,
            "wall_time_s": self.wall_time_s,
            "generate_time_s": self.generate_time_s,
            "state": self.state,
            "results_path": str(self.results_path),
        }
        out.update({f"crashed.{cause}": n for cause, n in sorted(self.crashed_by_cause.items())})
        out.update({f"phase.{name}_s": secs for name, secs in self.phases.items()})
        return out
