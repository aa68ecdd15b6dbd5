"""The Ray executor on a local Ray cluster with logical GPUs: same outputs as the local executor, one result
per cell, actor deaths recorded with the right cause and the actor replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from runner.generation.executors.local import LocalExecutor  # noqa: E402
from runner.generation.executors.ray import RayExecutor, death_cause  # noqa: E402
from runner.run.engine import run_experiment  # noqa: E402
from runner.spec import (  # noqa: E402
    Executor,
    expand,
    load_spec,
)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    # Two logical GPUs on this CPU machine: actors are scheduled as on a 2-GPU node, and run on the CPU.
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )
    yield ray
    ray.shutdown()


def _outputs(tracker: Any) -> dict[str, tuple[str, str | None]]:
    return {cid: (r.status, r.output) for cid, r in tracker.results.items()}


def test_ray_matches_local_executor(
    ray_cluster: Any,
    make_gen_spec: Callable[..., Path],
    recording_tracker: Callable[..., Any],
    stub_retriever: Any,
) -> None:
    exp = load_spec(make_gen_spec(questions=3, personas=2, pov_sets=2))
    cells = expand(exp)
    assert len(cells) == 12
    local, remote = recording_tracker(), recording_tracker()
    run_experiment(
        exp, cells, local, LocalExecutor(None, exp.spec.limits), retriever=stub_retriever, quiet=True
    )
    config = Executor(kind="ray", num_gpus=1.0)
    summary = run_experiment(
        exp, cells, remote, RayExecutor(config, exp.spec.limits), retriever=stub_retriever, quiet=True
    )
    assert summary.finished == 12 and summary.crashed == 0
    assert _outputs(remote) == _outputs(local)
    assert all(status == "finished" and out is not None for status, out in _outputs(remote).values())


def test_fractional_gpus_give_more_actors(ray_cluster: Any) -> None:
    half = RayExecutor(Executor(kind="ray", num_gpus=0.5))
    assert half.slot_plan(ray_cluster, n_groups=10) == (4, 0.5)
    assert half.slot_plan(ray_cluster, n_groups=3) == (3, 0.5)  # no idle actors
    one = RayExecutor(Executor(kind="ray", num_gpus=1.0, gpus=[0]))
    assert one.slot_plan(ray_cluster, n_groups=5) == (1, 1.0)


def test_actor_deaths_are_recorded_and_actor_replaced(
    ray_cluster: Any,
    make_gen_spec: Callable[..., Path],
    recording_tracker: Callable[..., Any],
    stub_retriever: Any,
) -> None:
    faults = """faults:
  - {cause: killed, match: {question: q1, persona: a1, pov_set: p1}}
  - {cause: segfault, match: {question: q2, persona: a2, pov_set: p2}}
  - {cause: exception, match: {question: q3, persona: a1, pov_set: p2}}
  - {cause: timeout, match: {question: q3, persona: a2, pov_set: p1}}"""
    exp = load_spec(
        make_gen_spec(questions=3, personas=2, pov_sets=2, limits="{cell_timeout_s: 4}", extra=faults)
    )
    cells = expand(exp)
    tracker = recording_tracker()
    executor = RayExecutor(Executor(kind="ray"), exp.spec.limits)
    summary = run_experiment(exp, cells, tracker, executor, retriever=stub_retriever, quiet=True)
    expected = {
        ("q1", "a1", "p1"): "killed",
        ("q2", "a2", "p2"): "segfault",
        ("q3", "a1", "p2"): "exception",
        ("q3", "a2", "p1"): "timeout",
    }
    by_axes = {(c.question, c.persona, c.pov_set): tracker.results[c.id] for c in cells}
    assert len(tracker.results) == len(cells) == 12
    for axes, result in by_axes.items():
        if axes in expected:
            assert result.status == "crashed", axes
            assert result.cause == expected[axes], (axes, result.cause, result.error)
        else:
            assert result.status == "finished", (axes, result.cause, result.error)
            assert result.output is not None
    assert summary.crashed == 4 and summary.finished == 8
    assert executor.restarts >= 3  # killed, segfault and timeout each took an actor down


def test_external_kill_of_an_actor_mid_batch(
    ray_cluster: Any,
    make_gen_spec: Callable[..., Path],
    recording_tracker: Callable[..., Any],
    stub_retriever: Any,
) -> None:
    # A slow batch (many new tokens) gives the killer time to find the actor busy and SIGKILL it from outside.
    exp = load_spec(
        make_gen_spec(questions=2, personas=2, pov_sets=2, limits="{cell_timeout_s: 60}", extra="").__str__(),
        ["generation.max_new_tokens=200", "generation.min_new_tokens=200", "generation.batch_size=8"],
    )
    cells = expand(exp)
    tracker = recording_tracker()
    executor = RayExecutor(Executor(kind="ray"), exp.spec.limits)
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for worker in list(executor.workers):
                if worker.in_flight and worker.pid is not None:
                    os.kill(worker.pid, signal.SIGKILL)
                    killed.append(worker.pid)
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = run_experiment(exp, cells, tracker, executor, retriever=stub_retriever, quiet=True)
    thread.join(timeout=5)
    assert killed, "the actor was never seen busy"
    assert executor.restarts >= 1  # a new actor took over
    # The killed batch was retried one cell at a time on the new actor: nothing is lost or duplicated.
    assert len(tracker.results) == len(cells) == summary.finished + summary.crashed
    assert summary.finished == len(cells)


def test_death_cause_reads_faulthandler_and_ray_messages() -> None:
    assert (
        death_cause("The actor died unexpectedly", "Fatal Python error: Segmentation fault\n") == "segfault"
    )
    assert death_cause("", "Fatal Python error: Aborted\n") == "abort"
    # Ray names SIGSEGV among the possible causes of any death; without a dump it is a kill.
    assert (
        death_cause("... (3) the worker crashed unexpectedly due to SIGSEGV or another error", "") == "killed"
    )
    assert death_cause("The actor died unexpectedly before finishing this task.", "") == "killed"
