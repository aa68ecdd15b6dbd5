"""Out of memory without losing the run's shape: a batch that runs out of memory is split in halves down to
one cell, every generate call is recorded on its cells, and the frontier read back from those records is
where the memory limit was. Unit tests drive the group driver with a scripted worker whose memory holds a
set number of batch tokens; the end-to-end test runs the tiny model in real worker processes with an
injected `cuda_oom` above a batch-token threshold, records in MLflow, and reports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import StubRetriever, gen_spec

from runner.generation.executors.pool import RestartBudget, make_batches, run_group
from runner.generation.jobs import Job, JobResult, WorkerCrash
from runner.generation.worker import measured_of, serve_batch
from runner.spec import Generation, Limits

PARAMS = Generation(max_new_tokens=3, batch_size=8)


class MemoryWorker:
    """Holds `limit` batch tokens: a batch of n prompts of at most w characters (a character is a token
    here) runs out of memory when n * w > limit, with `cause` (`cuda_oom`, or `killed`, which kills it)."""

    def __init__(self, limit: int, cause: str = "cuda_oom") -> None:
        self.limit, self.cause = limit, cause
        self._alive = False
        self.starts = 0
        self.calls: list[tuple[int, int]] = []
        self.seeds: list[int] = []

    @property
    def alive(self) -> bool:
        return self._alive

    def start(self) -> dict[str, float]:
        self.starts += 1
        self._alive = True
        return {}

    def run_batch(
        self, jobs: list[Job], params: Generation, timeout_s: float, ahead: list[Job] | None = None
    ) -> list[JobResult]:
        width = max(len(j.prompt) for j in jobs)
        self.calls.append((len(jobs), width))
        self.seeds.append(params.seed)
        if len(jobs) * width > self.limit:
            self._alive = self.cause != "killed"
            raise WorkerCrash(
                self.cause,
                "OutOfMemoryError: CUDA out of memory",
                "tail",
                worker_alive=self._alive,
                measured={"padded_prompt_tokens": float(width), "gpu_peak_allocated_mb": 900.0},
            )
        return [
            JobResult(
                j.cell_id,
                "finished",
                output=f"answer {j.cell_id}",
                metrics={
                    "batch_size": float(len(jobs)),
                    "padded_prompt_tokens": float(width),
                    "prompt_tokens": float(len(j.prompt)),
                    "new_tokens": 2.0,
                    "gpu_peak_allocated_mb": 100.0 * len(jobs),
                },
            )
            for j in jobs
        ]


def drive(
    worker: MemoryWorker, jobs: list[Job], params: Generation = PARAMS, **limits: Any
) -> dict[str, JobResult]:
    out: dict[str, JobResult] = {}

    def emit(results: list[JobResult]) -> None:
        for r in results:
            assert r.cell_id not in out, "a cell reported twice"
            out[r.cell_id] = r

    lim = Limits(cell_timeout_s=1, **limits)
    run_group(worker, jobs, params, lim, emit, RestartBudget(lim.max_worker_restarts))
    return out


def test_a_batch_out_of_memory_is_halved_until_it_fits() -> None:
    jobs = [Job(f"c{i}", "p" * 10) for i in range(8)]
    worker = MemoryWorker(limit=25)  # 8 x 10 and 4 x 10 are too many; 2 x 10 fits
    out = drive(worker, jobs)
    assert {r.status for r in out.values()} == {"finished"}
    assert [n for n, _ in worker.calls] == [8, 4, 2, 2, 4, 2, 2]  # depth first: each half before the next
    for r in out.values():
        tried = r.attempts
        assert [(a["size"], a["outcome"]) for a in tried] == [(8, "cuda_oom"), (4, "cuda_oom"), (2, "fitted")]
        assert [a["batch_tokens"] for a in tried] == [80, 40, 20]
        assert tried[0]["gpu_peak_mb"] == 900.0 and tried[-1]["gpu_peak_mb"] == 200.0
        assert r.metrics["memory_retries"] == 2 and r.metrics["attempts"] == 3
        # The batch it came from: itself and the one other cell it shared it with.
        assert r.batch["size"] == 2 and r.cell_id in r.batch["cells"] and len(r.batch["cells"]) == 2
        assert r.batch["attempt"] == tried[-1]["id"]
    pairs = {tuple(r.batch["cells"]) for r in out.values()}
    assert pairs == {("c0", "c1"), ("c2", "c3"), ("c4", "c5"), ("c6", "c7")}
    # One attempt is one generate call, whichever cells record it.
    ids = {a["id"] for r in out.values() for a in r.attempts}
    assert len(ids) == len(worker.calls)


def test_only_a_cell_that_runs_out_of_memory_alone_is_recorded_crashed() -> None:
    jobs = [Job(f"c{i}", "p" * 10) for i in range(7)] + [Job("huge", "p" * 30)]
    out = drive(MemoryWorker(limit=25), jobs)
    crashed = {cid: r for cid, r in out.items() if r.status == "crashed"}
    assert set(crashed) == {"huge"}
    huge = crashed["huge"]
    assert huge.cause == "cuda_oom" and "out of memory" in (huge.error or "")
    assert [(a["size"], a["batch_tokens"]) for a in huge.attempts] == [(8, 240), (4, 120), (2, 60), (1, 30)]
    assert huge.metrics["memory_retries"] == 4 and not huge.batch
    # Its partner in the last pair ran again alone and fitted.
    assert [a["size"] for a in out["c6"].attempts] == [8, 4, 2, 1]
    assert out["c6"].attempts[-1]["outcome"] == "fitted"


def test_a_worker_killed_for_memory_is_restarted_and_the_batch_halved() -> None:
    jobs = [Job(f"c{i}", "p" * 10) for i in range(4)]
    worker = MemoryWorker(limit=25, cause="killed")
    out = drive(worker, jobs)
    assert {r.status for r in out.values()} == {"finished"}
    assert [n for n, _ in worker.calls] == [4, 2, 2]
    assert worker.starts == 2  # the death of the batch of 4 cost one restart
    assert out["c0"].attempts[0]["outcome"] == "killed"


def test_retries_are_bounded_per_group() -> None:
    jobs = [Job(f"c{i}", "p" * 10) for i in range(8)]
    worker = MemoryWorker(limit=15)
    out = drive(worker, jobs, max_memory_retries=2)  # one split: 8 -> 4 + 4, then no more
    assert [n for n, _ in worker.calls] == [8, 4, 4]
    assert {r.status for r in out.values()} == {"crashed"}
    assert all("limits.max_memory_retries = 2" in (r.error or "") for r in out.values())
    assert all([a["size"] for a in r.attempts] == [8, 4] for r in out.values())


def test_batch_invariant_runs_every_cell_alone() -> None:
    worker = MemoryWorker(limit=1000)
    out = drive(
        worker, [Job(f"c{i}", "p") for i in range(5)], PARAMS.model_copy(update={"batch_invariant": True})
    )
    assert len(out) == 5 and [n for n, _ in worker.calls] == [1] * 5
    assert all(r.batch["cells"] == [r.cell_id] for r in out.values())


def test_repeats_run_in_batches_of_their_own_seed() -> None:
    jobs = [Job(f"c{i}", "p" * (i + 1)) for i in range(3)]
    jobs += [Job(f"r{i}", "p" * (i + 1), seed=77) for i in range(3)]
    assert [[j.cell_id for j in b] for b in make_batches(jobs, 8)] == [["c0", "c1", "c2"], ["r0", "r1", "r2"]]
    worker = MemoryWorker(limit=1000)
    drive(worker, jobs)
    assert worker.seeds == [PARAMS.seed, 77]


# -- the in-worker side: a fault that fires only above a batch-token threshold ---------------------------------
class Echo:
    device = "cpu"

    def generate(self, prompts: list[str], params: Any) -> list[Any]:
        from runner.generation.backends.base import GenerationOut

        return [GenerationOut(p, len(p.split()), 1, 0.1, 10.0) for p in prompts]


def test_an_injected_oom_fires_only_above_its_batch_tokens() -> None:
    import torch

    # Echo encodes inside generate: the batch's width is its longest prompt in words (3 here).
    jobs = [Job("a", "one two three", fault="cuda_oom", fault_above_tokens=6), Job("b", "four five")]
    shapes: list[dict[str, float]] = []
    with pytest.raises(torch.cuda.OutOfMemoryError) as e:  # 2 x 3 = 6 is not above 6 ... plus one
        serve_batch(Echo(), [*jobs, Job("c", "six")], PARAMS, on_shape=shapes.append)
    assert measured_of(e.value)["padded_prompt_tokens"] == 3.0 and measured_of(e.value)["batch_size"] == 3
    assert shapes == [{"batch_size": 3.0, "padded_prompt_tokens": 3.0}]
    results = serve_batch(Echo(), jobs, PARAMS)  # 2 x 3 = 6: at the threshold, not above it
    assert [r.status for r in results] == ["finished", "finished"]
    assert results[0].metrics["padded_prompt_tokens"] == 3.0


# -- end to end: the tiny model, real workers, an injected OOM above N batch tokens, MLflow, the report ---------
THRESHOLD = 1000
"""Batch tokens above which the injected OOM fires. The tiny model's prompts here are 315-351 tokens (the
long question's are cut to 2,044): pairs of short prompts fit, fours do not, a long prompt never does."""


@pytest.fixture(scope="module")
def oom_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    from runner.report import build, load_execution, write_report
    from runner.run.engine import run_experiment
    from runner.spec import expand, load_spec
    from runner.tracking import MlflowTracker, make_client

    tmp = tmp_path_factory.mktemp("oom")
    path = gen_spec(
        tmp,
        tiny_model_dir,
        questions=4,
        personas=2,
        pov_sets=3,
        limits="{cell_timeout_s: 30}",
        extra=f"faults:\n  - {{cause: cuda_oom, above_batch_tokens: {THRESHOLD}}}\n",
    )
    text = path.read_text().replace("batch_size: 4", "batch_size: 8")
    path.write_text(text.replace("max_seq_length: 512", "max_seq_length: 2048"))
    exp = load_spec(path)
    cells = expand(exp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "stepdown")
    long_q4 = " ".join(["Sanctions push trade into local currencies."] * 200)
    summary = run_experiment(
        exp, cells, tracker, retriever=StubRetriever(override={"q4": long_q4}), quiet=True
    )
    client = make_client(uri)
    execution = load_execution(client, str(tracker.run_id))
    data = build([execution])
    out = tmp / "report"
    write_report(data, out, "stepdown")
    logs = "".join(p.read_text(errors="replace") for p in (summary.run_dir / "workers").glob("*.log"))
    return {
        "cells": cells,
        "summary": summary,
        "execution": execution,
        "data": data["executions"][0],
        "out": out,
        "client": client,
        "logs": logs,
    }


def _attempts(oom_run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["id"]: a for c in oom_run["execution"].cells for a in json.loads(c.tags["pov.attempts"])}


@pytest.mark.slow
def test_the_frontier_found_is_the_injected_one(oom_run: dict[str, Any]) -> None:
    (edge,) = oom_run["data"]["memory"]["frontier"]
    assert edge["cap"] == f"injected: {THRESHOLD} batch tokens" and edge["model"] == "tiny"
    fitted, failed = edge["fitted"], edge["failed"]
    assert fitted["batch_tokens"] <= THRESHOLD < failed["batch_tokens"]
    # Within one halving: the smallest batch that did not fit is at most about twice the largest that did.
    assert failed["size"] == 2 * fitted["size"]
    assert failed["batch_tokens"] <= 2 * fitted["batch_tokens"]
    assert edge["bracketed"]


@pytest.mark.slow
def test_no_cell_that_fits_alone_is_recorded_crashed(oom_run: dict[str, Any]) -> None:
    summary, cells = oom_run["summary"], oom_run["execution"].cells
    assert len(oom_run["cells"]) == 24 and len(cells) == 24
    crashed = {c.cell_id for c in cells if c.crashed}
    assert crashed == {c.id for c in oom_run["cells"] if c.question == "q4"}  # the prompts over 1,000 alone
    assert summary.finished == 18 and summary.crashed_by_cause == {"cuda_oom": 6}
    for c in cells:
        last = json.loads(c.tags["pov.attempts"])[-1]
        if c.crashed:
            assert (last["size"], last["outcome"]) == (1, "cuda_oom") and last["batch_tokens"] > THRESHOLD
        else:
            assert last["outcome"] == "fitted" and c.metrics["batch_tokens"] == last["batch_tokens"]


@pytest.mark.slow
def test_every_attempt_is_recorded(oom_run: dict[str, Any]) -> None:
    attempts = _attempts(oom_run)
    # The worker logged each injected OOM it raised: one line per generate call that ran out of memory.
    raised = len(re.findall(r"^injected fault 'cuda_oom' for cell", oom_run["logs"], re.MULTILINE))
    assert raised == sum(a["outcome"] == "cuda_oom" for a in attempts.values()) > 0
    assert {a["size"] for a in attempts.values()} == {8, 4, 2, 1}
    for a in attempts.values():  # the injection's own rule, checked on what was recorded
        assert (a["outcome"] == "cuda_oom") == (a["batch_tokens"] > THRESHOLD)
        assert a["batch_tokens"] == a["size"] * a["padded_prompt_tokens"]
    # A fitted batch's padded length is its longest prompt, as each of its cells measured its own.
    rows = {c.cell_id: c for c in oom_run["execution"].cells}
    for c in rows.values():
        if not c.crashed:
            stored = oom_run["client"].download_artifacts(c.run_id, "batch.json")
            batch = json.loads(Path(stored).read_text())["batch"]
            longest = max(rows[cid].metrics["prompt_tokens"] for cid in batch["cells"])
            assert batch["padded_prompt_tokens"] == longest
            assert all(rows[cid].tags["pov.batch_id"] == batch["attempt"] for cid in batch["cells"])


@pytest.mark.slow
def test_the_report_shows_the_frontier_chart(oom_run: dict[str, Any]) -> None:
    out = oom_run["out"]
    page = (out / "report.html").read_text()
    assert '<img src="frontier.png" alt="memory frontier">' in page
    assert (out / "frontier.png").stat().st_size > 5000
    edge = oom_run["data"]["memory"]["frontier"][0]
    fitted = edge["fitted"]
    assert f"{fitted['size']} × {fitted['padded_prompt_tokens']} = {fitted['batch_tokens']}" in page
    assert oom_run["data"]["memory"]["oom_alone"] == 6
