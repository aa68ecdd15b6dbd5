"""After generation, per cell: the worker's JobResult becomes a CellResult (retrieval scores, output checks
and prompt complexity added), written to the results file first and then to the tracker."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from runner.run.checks import evaluate
from runner.run.complexity import measure
from runner.run.results import CellResult
from runner.spec import repeat_seed

if TYPE_CHECKING:
    import numpy as np
    from rich.progress import Progress, TaskID

    from runner.generation import JobResult
    from runner.run.prepare import Prepared
    from runner.run.sinks import JsonlSink
    from runner.run.summary import RunSummary
    from runner.run.tracker import Tracker
    from runner.spec import Experiment

log = logging.getLogger(__name__)


def batch_share(metrics: dict[str, float]) -> float:
    """A finished cell's share of its batch's generate time: every cell of a batch carries the batch's wall
    time (`batch_latency_s`) and size, and a batch either finishes whole or is retried cell by cell, so the
    shares of its cells add up to its time once. A cell's own `latency_s` is no share: with cells timed
    one by one, the batch's cells overlap. A result without `batch_latency_s` (from a worker older than it)
    carries the batch's time as its latency."""
    batch_s = metrics.get("batch_latency_s", metrics.get("latency_s", 0.0))
    return batch_s / max(metrics.get("batch_size", 1.0), 1.0)


class ResultCollector:
    """Receives the executor's JobResults and writes CellResults to the tracker and the results file."""

    def __init__(
        self,
        exp: Experiment,
        prepared: dict[str, Prepared],
        tracker: Tracker,
        sink: JsonlSink,
        summary: RunSummary,
        model_tags: dict[str, dict[str, str]],
        embed: Callable[[list[str]], np.ndarray] | None,
        progress: Progress | None = None,
        task: TaskID | None = None,
    ) -> None:
        self.exp, self.prepared, self.tracker, self.sink = exp, prepared, tracker, sink
        self.summary, self.model_tags, self.embed = summary, model_tags, embed
        self.progress, self.task = progress, task
        self.count_tokens: Callable[[str], Callable[[str], int] | None] = lambda model: None
        self.causes: Counter[str] = Counter()
        self._complexity: dict[str, dict[str, float]] = {}

    def _measure(self, prep: Prepared) -> dict[str, float]:
        if not prep.prompt:
            return {}
        try:
            v = prep.variables
            return dict(
                measure(
                    prep.prompt,
                    v["context"],
                    self.exp.templates[prep.cell.template],
                    v["persona"],
                    self.count_tokens(prep.cell.model),
                )
            )
        except Exception:
            log.exception("complexity.measure failed for cell %s", prep.cell.id)
            return {}

    def precompute(self) -> None:
        """Measure every prompt's complexity in a thread, while the workers generate, so that the last
        batch's results (which nothing else overlaps) need no tokenizing; a cell it has not reached yet
        is measured when its result arrives."""

        def work() -> None:
            for cell_id, prep in list(self.prepared.items()):
                if cell_id not in self._complexity:
                    self._complexity[cell_id] = self._measure(prep)

        threading.Thread(target=work, name="pov-complexity", daemon=True).start()

    def __call__(self, results: list[JobResult]) -> None:
        cell_results = [self.cell_result(r) for r in results]
        # The results file first: it is the record that survives whatever happens to the tracker.
        self.sink.write(cell_results)
        for r in cell_results:
            if r.status == "finished":
                self.summary.finished += 1
                self.summary.generate_time_s += batch_share(r.metrics)
            else:
                self.summary.crashed += 1
                self.causes[r.cause or "exception"] += 1
        self.summary.crashed_by_cause = dict(self.causes)
        self.tracker.log(cell_results)
        if self.progress is not None and self.task is not None:
            crashed = f" [red]{self.summary.crashed} crashed[/red]" if self.summary.crashed else ""
            self.progress.update(self.task, advance=len(cell_results), description=f"generating{crashed}")

    def cell_result(self, r: JobResult) -> CellResult:
        prep = self.prepared[r.cell_id]
        now = time.time()
        metrics = {**prep.metrics, **r.metrics}
        metrics["seed"] = float(repeat_seed(self.exp.spec.generation.seed, prep.cell.repeat))
        tags = dict(self.model_tags.get(prep.cell.model, {}))
        measured = self._complexity.get(r.cell_id)
        metrics.update(measured if measured is not None else self._measure(prep))
        try:
            m, t = evaluate(
                r.output if r.status == "finished" else None,
                self.exp.templates[prep.cell.template],
                prep.context_texts,
                self.exp.pov_sets[prep.cell.pov_set],
                self.exp.spec.checks,
                self.embed,
            )
            metrics.update(m)
            tags.update(t)
        except Exception:
            log.exception("checks.evaluate failed for cell %s", r.cell_id)
        return CellResult(
            cell=prep.cell,
            status="finished" if r.status == "finished" else "crashed",
            prompt=prep.prompt,
            context=prep.context,
            output=r.output,
            cause=r.cause,
            error=r.error,
            stderr_tail=r.stderr_tail,
            metrics=metrics,
            tags=tags,
            started_at=r.started_at or now,
            ended_at=r.ended_at or now,
            batch=dict(r.batch),
            attempts=list(r.attempts),
        )
