"""The Ray executor: workers are Ray actors that keep their model loaded across batches.

The driver (this process) stays the only tracker writer: actors return JobResults. Each actor asks for
`executor.num_gpus` GPUs (a fraction lets several small models share one). Actor and task failures map
onto the same crash causes as local workers:

- an exception inside `run_batch` (a `RayTaskError`) → `cuda_oom` when its cause is a CUDA OOM, else
  `exception`; the actor lives on;
- the actor's death (`ActorDiedError`, `WorkerCrashedError`, or Ray's own `OutOfMemoryError` when its memory
  monitor kills a worker) → `segfault` / `abort` when the actor's stderr (faulthandler) or Ray's message
  names the signal, else `killed`; the actor is replaced;
- no answer within the batch deadline (`GetTimeoutError`) → `timeout`; the actor is killed and replaced;
- the death of the actor's node (its raylet, or the whole host) → `node_lost`: the batch runs again, whole,
  on an actor Ray places on a live node (`executor.node_retries` times; then its cells are recorded
  crashed with that cause).

Batching, crash isolation and restarts are the same code as the local executor's (`executors.pool`); how
the cluster is joined, checked and reached (code, model files) is `executors.ray_cluster`; how many actors
and how groups are shared out over them, `executors.placement`.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.generation.backends import RemoteBackend, is_remote, remote_worker
from runner.generation.executors.placement import n_batches, slot_plan, split_groups
from runner.generation.executors.pool import PooledExecutor, SlotPool
from runner.generation.executors.ray_actor import GenerationActor, death_cause
from runner.generation.executors.ray_cluster import check_fit, connect, import_ray, pack_folder, probe, ships
from runner.generation.jobs import (
    NODE_LOST,
    Groups,
    Job,
    JobResult,
    LoadFailed,
    WorkerCrash,
    classify_exception,
)
from runner.generation.worker import LOAD_TIMEOUT_S, file_size, measured_of, read_tail

if TYPE_CHECKING:
    from runner.spec import Executor, Generation, Limits, Model


class RayWorker:
    """The driver's handle on one actor slot; implements executors.pool.Worker."""

    def __init__(
        self,
        ray: Any,
        model: Model,
        limits: Limits,
        config: Executor,
        log_path: Path,
        gpus_per_actor: float,
        shipped: Any = None,
    ) -> None:
        self.ray, self.model, self.limits, self.config = ray, model, limits, config
        self.log_path, self.gpus_per_actor, self.shipped = log_path, gpus_per_actor, shipped
        self.actor: Any = None
        self.info: dict[str, float] = {}
        self.device = "cpu"
        self.starts = 0
        self.pid: int | None = None
        self.where: dict[str, str] = {}
        """The live actor's node id and IP, the model folder it loaded and where its code came from."""
        self.in_flight = False

    @property
    def alive(self) -> bool:
        return self.actor is not None

    def start(self) -> dict[str, float]:
        # An actor placed on a node that dies while it loads is placed again (Ray knows the node dead by then).
        for tries_left in reversed(range(self.config.node_retries + 1)):
            try:
                return self._start()
            except LoadFailed as failed:
                if failed.cause != NODE_LOST or not tries_left:
                    raise
        raise AssertionError("unreachable")

    def _start(self) -> dict[str, float]:
        ray = self.ray
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = file_size(self.log_path)
        remote = ray.remote(GenerationActor).options(
            num_gpus=self.gpus_per_actor,
            num_cpus=1,
            resources=dict(self.config.resources) or None,
            max_restarts=0,
            max_task_retries=0,
        )
        self.actor = remote.remote(
            self.model.model_dump(mode="json"), self.limits.gpu_memory_gb, str(self.log_path), self.shipped
        )
        self.starts += 1
        try:
            self.device, self.info, self.pid, self.where = ray.get(
                self.actor.ready.remote(), timeout=LOAD_TIMEOUT_S
            )
        except Exception as e:
            tail = read_tail(self.log_path, offset)
            node = self.where.get("node_id")
            self.kill()
            if _is_death(ray, e):
                cause = NODE_LOST if node_lost(ray, e, node) else death_cause(str(e), tail)
            else:
                cause = classify_exception(_root(ray, e))[0]
            raise LoadFailed(
                cause, f"{type(e).__name__}: {_first_line(e)}", tail, worker_alive=False
            ) from None
        return self.info

    def run_batch(
        self, jobs: list[Job], params: Generation, timeout_s: float, ahead: list[Job] | None = None
    ) -> list[JobResult]:
        ray = self.ray
        offset = file_size(self.log_path)
        ref = self.actor.run_batch.remote(jobs, params.model_dump(mode="json"), ahead)
        self.in_flight = True
        try:
            results: list[JobResult] = ray.get(ref, timeout=timeout_s)
            for r in results:  # batch.json says which node answered
                r.batch["node"] = self.where.get("node_ip", "")
            return results
        except ray.exceptions.GetTimeoutError:
            lost = node_lost(ray, None, self.where.get("node_id"))
            self.kill()
            raise WorkerCrash(
                NODE_LOST if lost else "timeout",
                f"no answer within {timeout_s:.0f} s (limits.cell_timeout_s x batch); actor killed"
                + (f"; its node {self.where.get('node_ip')} is gone" if lost else ""),
                read_tail(self.log_path, offset),
                worker_alive=False,
            ) from None
        except ray.exceptions.RayTaskError as e:
            cause, error = classify_exception(_root(ray, e))
            raise WorkerCrash(
                cause,
                error,
                read_tail(self.log_path, offset),
                worker_alive=not _is_death(ray, e),
                measured=measured_of(_root(ray, e)),
            ) from None
        except Exception as e:
            if not _is_death(ray, e):
                raise
            tail = read_tail(self.log_path, offset)
            lost = node_lost(ray, e, self.where.get("node_id"))
            self.kill()
            raise WorkerCrash(
                NODE_LOST if lost else death_cause(str(e), tail),
                f"{type(e).__name__}: {_first_line(e)}"
                + (f" (node {self.where.get('node_ip')} lost)" if lost else ""),
                tail,
                worker_alive=False,
            ) from None
        finally:
            self.in_flight = False

    def kill(self) -> None:
        if self.actor is not None:
            with contextlib.suppress(Exception):  # already dead
                self.ray.kill(self.actor, no_restart=True)
            self.actor = None

    stop = kill
    terminate = kill


NODE_DEATH_WAIT_S = 45.0
"""How long a dead actor's node may take to be declared dead by the cluster (Ray's health checks: about
15-30 s by default) before the actor's death is put down to something else."""


def node_lost(ray: Any, e: BaseException | None, node_id: str | None) -> bool:
    """Whether the actor died with its node: Ray says so, or the cluster marks the node dead.

    When the actor's connection drops, its node may not be declared dead yet, so a death that Ray does
    not explain is checked against the node's health for up to NODE_DEATH_WAIT_S: an actor killed alone
    leaves its node answering, and then this returns as soon as the node is seen alive and well."""
    text = str(e or "").lower()
    if getattr(e, "preempted", False) or "node has died" in text or "node died" in text:
        return True
    if not node_id:
        return False
    deadline = time.monotonic() + NODE_DEATH_WAIT_S
    while True:
        state = _node_state(ray, node_id)
        if state is False:
            return True
        if state is True and _node_answers(ray, node_id):
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def _node_state(ray: Any, node_id: str) -> bool | None:
    """True: the cluster counts the node alive; False: dead; None: unknown (the GCS did not answer)."""
    try:
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                return bool(node.get("Alive"))
    except Exception:
        return None
    return False


@functools.cache
def _probe_task(ray: Any) -> Any:
    return ray.remote(num_cpus=0)(_noop)


def _noop() -> bool:
    return True


def _node_answers(ray: Any, node_id: str) -> bool:
    """Whether a task pinned to the node runs within a few seconds (its raylet is there and schedules)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        ref = (
            _probe_task(ray)
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
            .remote()
        )
        return bool(ray.get(ref, timeout=10))
    except Exception:
        return False


def _is_death(ray: Any, e: BaseException) -> bool:
    ex = ray.exceptions
    kinds = tuple(
        k
        for k in (
            getattr(ex, n, None)
            for n in (
                "ActorDiedError",
                "ActorUnavailableError",
                "WorkerCrashedError",
                "OutOfMemoryError",
                "NodeDiedError",
                "LocalRayletDiedError",
            )
        )
        if k is not None
    )
    return isinstance(e, kinds)


def _root(ray: Any, e: BaseException) -> BaseException:
    """The exception raised inside the actor, unwrapped from RayTaskError."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


class RayExecutor(PooledExecutor):
    name = "ray"

    def __init__(
        self, config: Executor | None = None, limits: Limits | None = None, *, log_dir: Path | None = None
    ) -> None:
        from runner.spec import Executor, Limits

        self.config, self.limits, self.log_dir = config or Executor(kind="ray"), limits or Limits(), log_dir
        self._pool = SlotPool(self.limits, node_retries=self.config.node_retries)
        self._owns_ray = False
        self.placed: dict[str, int] = {}
        """Work items (model groups, or shards of one) per actor slot of the last run: `group#n` keys."""

    def _ray(self) -> Any:
        ray = import_ray()
        if not ray.is_initialized():
            # `auto` joins a cluster started with `ray start --head`; no address starts a local Ray here.
            connect(self.config)
            self._owns_ray = True
        return ray

    def check(self) -> None:
        """Ray imports; a cluster named by `address` answers (else RunAborted, exit 1, within seconds) and has
        a node that can hold one actor as configured (else UserError). A local Ray (no address) is started
        by the run itself, once it has work, and checked then, before any model loads."""
        import_ray()
        if not self.config.address:
            return
        probe(self.config.address)
        check_fit(self._ray(), self.config)

    def describe(self) -> str:
        where = self.config.address or "a local Ray started for this run"
        return f"Ray actors ({self.config.num_gpus:g} GPU each where there are GPUs) on {where}"

    def prestart(self, models: Mapping[str, Model], log_dir: Path | None = None) -> None:
        """Actors are placed by Ray when the run starts; only the log folder is settled now."""
        if self.log_dir is None:
            self.log_dir = log_dir

    def slot_plan(self, ray: Any, n_groups: int) -> tuple[int, float]:
        """(number of actors, GPUs per actor) for this cluster and `n_groups` work items."""
        nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
        return slot_plan(self.config, nodes, n_groups)

    def run(self, groups: Groups, params: Generation, on_result: Callable[[list[JobResult]], None]) -> None:
        ray = self._ray()
        try:
            check_fit(ray, self.config)
            log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="pov-ray-"))
            size = 1 if params.batch_invariant else params.batch_size
            n_groups = max(1, sum(1 for _, jobs in groups.values() if jobs))
            work = max(n_groups, n_batches(groups, size)) if self.config.split_groups else n_groups
            n_slots, per_actor = self.slot_plan(ray, work)
            if self.config.split_groups and n_slots > n_groups:
                groups = split_groups(groups, n_slots, size)
            shipped = {
                m.name: ray.put(pack_folder(Path(m.name)))
                for m, _ in groups.values()
                if ships(self.config, m) and not is_remote(m.backend)
            }

            def make_worker(index: int, key: str, model: Model) -> RayWorker | RemoteBackend:
                self.placed[key] = index
                if is_remote(model.backend):  # the model runs in a server: this process talks to it
                    return remote_worker(
                        model, self.limits, log_dir / f"server{index}-{key}.log", self._pool.stop.is_set
                    )
                return RayWorker(
                    ray,
                    model,
                    self.limits,
                    self.config,
                    log_dir / f"actor{index}-{key}.log",
                    per_actor,
                    shipped.get(model.name),
                )

            self.placed = {}
            self._pool.run(groups, n_slots, make_worker, params, on_result)
        finally:
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False
