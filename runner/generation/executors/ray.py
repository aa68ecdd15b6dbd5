"""The Ray executor: workers are Ray actors that keep their model loaded across batches.

The driver (this process) stays the only tracker writer: actors return JobResults. Each actor asks for
`executor.num_gpus` GPUs (a fraction lets several small models share one). Actor and task failures map
onto the same crash causes as local workers:

- an exception inside `run_batch` (a `RayTaskError`) → `cuda_oom` when its cause is a CUDA OOM, else
  `exception`; the actor lives on;
- the actor's death (`ActorDiedError`, `WorkerCrashedError`, or Ray's own `OutOfMemoryError` when its memory
  monitor kills a worker) → `segfault` / `abort` when the actor's stderr (faulthandler) or Ray's message
  names the signal, else `killed`; the actor is replaced;
- no answer within the batch deadline (`GetTimeoutError`) → `timeout`; the actor is killed and replaced.

Batching, crash isolation and restarts are the same code as the local executor's (`executors.driver`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.generation.backends import RemoteBackend, is_remote, remote_worker
from runner.generation.executors.pool import PooledExecutor, SlotPool
from runner.generation.jobs import Groups, Job, JobResult, LoadFailed, WorkerCrash, classify_exception
from runner.generation.worker import LOAD_TIMEOUT_S, file_size, measured_of, read_tail

if TYPE_CHECKING:
    from runner.spec import Executor, Generation, Limits, Model


class GenerationActor:
    """Lives in a Ray worker process: loads one model once, then answers batches."""

    def __init__(self, model_data: dict[str, Any], gpu_memory_gb: float | None, log_path: str | None) -> None:
        import faulthandler

        if log_path:
            try:
                from runner.generation.worker import redirect_output

                redirect_output(log_path)  # so a segfault's faulthandler dump can be read by the driver
            except OSError:
                pass  # on a remote node the driver's path may not exist: Ray's own logs still have it
        faulthandler.enable(all_threads=True)
        from runner.spec import Model

        model = Model.model_validate(model_data)
        if model.backend == "unsloth":
            from runner.generation.backends.unsloth import preimport

            preimport()  # before transformers is imported in this process
        from runner.generation.backends import backend_class
        from runner.generation.worker import cap_gpu_memory

        backend_cls = backend_class(model.backend)
        import torch

        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU(s); logical GPUs on a CPU box leave CUDA unavailable.
        device = "cuda:0" if torch.cuda.is_available() and model.device != "cpu" else "cpu"
        if device.startswith("cuda"):
            cap_gpu_memory(gpu_memory_gb, device)
        self.backend = backend_cls(model, device)
        from runner.generation.prefetch import Prefetcher

        self.prefetch = Prefetcher(self.backend)
        print(f"pov ray actor {os.getpid()}: loaded {model.name} on {device}", file=sys.stderr, flush=True)

    def ready(self) -> tuple[str, dict[str, float], int]:
        info = self.backend.info() if hasattr(self.backend, "info") else {}
        return str(getattr(self.backend, "device", "cpu")), info, os.getpid()

    def run_batch(
        self, jobs: list[Job], params_data: dict[str, Any], ahead: list[Job] | None = None
    ) -> list[JobResult]:
        from runner.generation.worker import release_memory, serve_batch
        from runner.spec import Generation

        try:
            return serve_batch(
                self.backend, jobs, Generation.model_validate(params_data), self.prefetch, ahead
            )
        except Exception:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            # Free the failed batch's tensors before Ray carries the error back, so the next batch fits.
            release_memory()
            raise


def death_cause(message: str, stderr_tail: str) -> str:
    """The crash cause of a dead actor, from the faulthandler dump in its stderr.

    Ray's own message cannot tell: it lists SIGSEGV among the possible causes of every unexpected death. A
    death that left no dump (SIGKILL, the OOM killer, or an actor on another node whose log is not here)
    counts as `killed`."""
    if re.search(r"Fatal Python error: (Segmentation fault|Bus error)", stderr_tail):
        return "segfault"
    if re.search(r"Fatal Python error: Aborted", stderr_tail):
        return "abort"
    return "killed"


class RayWorker:
    """The driver's handle on one actor slot; implements executors.driver.Worker."""

    def __init__(
        self, ray: Any, model: Model, limits: Limits, config: Executor, log_path: Path, gpus_per_actor: float
    ) -> None:
        self.ray, self.model, self.limits, self.config = ray, model, limits, config
        self.log_path, self.gpus_per_actor = log_path, gpus_per_actor
        self.actor: Any = None
        self.info: dict[str, float] = {}
        self.device = "cpu"
        self.starts = 0
        self.pid: int | None = None
        self.in_flight = False

    @property
    def alive(self) -> bool:
        return self.actor is not None

    def start(self) -> dict[str, float]:
        ray = self.ray
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = file_size(self.log_path)
        remote = ray.remote(GenerationActor).options(
            num_gpus=self.gpus_per_actor, num_cpus=1, max_restarts=0, max_task_retries=0
        )
        self.actor = remote.remote(
            self.model.model_dump(mode="json"), self.limits.gpu_memory_gb, str(self.log_path)
        )
        self.starts += 1
        try:
            self.device, self.info, self.pid = ray.get(self.actor.ready.remote(), timeout=LOAD_TIMEOUT_S)
        except Exception as e:
            tail = read_tail(self.log_path, offset)
            self.kill()
            cause = death_cause(str(e), tail) if _is_death(ray, e) else classify_exception(_root(ray, e))[0]
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
            return results
        except ray.exceptions.GetTimeoutError:
            self.kill()
            raise WorkerCrash(
                "timeout",
                f"no answer within {timeout_s:.0f} s (limits.cell_timeout_s x batch); actor killed",
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
            self.kill()
            raise WorkerCrash(
                death_cause(str(e), tail), f"{type(e).__name__}: {_first_line(e)}", tail, worker_alive=False
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


CONNECT_TIMEOUT_S = 5.0


def cluster_endpoint(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a cluster address (`ray://host:10001`, `host:6379`); None for none or `auto` (Ray
    finds that one itself, from the files `ray start` leaves)."""
    if not address or address == "auto":
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address if "://" in address else f"ray://{address}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (host, port) if host and port else None


class RayExecutor(PooledExecutor):
    name = "ray"

    def __init__(
        self, config: Executor | None = None, limits: Limits | None = None, *, log_dir: Path | None = None
    ) -> None:
        from runner.spec import Executor, Limits

        self.config, self.limits, self.log_dir = config or Executor(kind="ray"), limits or Limits(), log_dir
        self._pool = SlotPool(self.limits)
        self._owns_ray = False

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            from runner.errors import UserError

            raise UserError("the ray executor needs Ray: pip install 'pov-runner[ray]'") from None
        if not ray.is_initialized():
            # `auto` joins a cluster started with `ray start --head`; no address starts a local Ray here.
            ray.init(
                address=self.config.address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
                runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
            )
            self._owns_ray = True
        return ray

    def check(self) -> None:
        """Ray imports, and a cluster named by host and port takes a connection. Nothing is started here:
        a local Ray (no address) is started by the run itself, once it has work."""
        try:
            import ray  # noqa: F401
        except ImportError:
            from runner.errors import UserError

            raise UserError("the ray executor needs Ray: pip install 'pov-runner[ray]'") from None
        host_port = cluster_endpoint(self.config.address)
        if host_port is None:
            return
        import socket

        try:
            socket.create_connection(host_port, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            from runner.errors import UserError

            raise UserError(
                f"the Ray cluster at {self.config.address} does not answer ({e}): start it (`ray start "
                "--head`) or fix executor.address / --address"
            ) from None

    def describe(self) -> str:
        where = self.config.address or "a local Ray started for this run"
        return f"Ray actors ({self.config.num_gpus:g} GPU each where there are GPUs) on {where}"

    def prestart(self, models: Mapping[str, Model], log_dir: Path | None = None) -> None:
        """Actors are placed by Ray when the run starts; only the log folder is settled now."""
        if self.log_dir is None:
            self.log_dir = log_dir

    def slot_plan(self, ray: Any, n_groups: int) -> tuple[int, float]:
        """(number of actors, GPUs per actor) for this cluster."""
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        per_actor = self.config.num_gpus if gpus > 0 else 0.0
        if self.config.gpus is not None and gpus > 0:
            gpus = min(gpus, float(len(self.config.gpus)))
        if self.config.workers is not None:
            slots = self.config.workers
        elif per_actor > 0:
            slots = max(1, math.floor(gpus / per_actor + 1e-9))
        else:
            slots = 1
        return max(1, min(slots, n_groups)), per_actor

    def run(self, groups: Groups, params: Generation, on_result: Callable[[list[JobResult]], None]) -> None:
        ray = self._ray()
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="pov-ray-"))
        n_slots, per_actor = self.slot_plan(ray, max(1, sum(1 for _, jobs in groups.values() if jobs)))

        def make_worker(index: int, key: str, model: Model) -> RayWorker | RemoteBackend:
            if is_remote(model.backend):  # the model runs in a server: this process talks to it
                return remote_worker(
                    model, self.limits, log_dir / f"server{index}-{key}.log", self._pool.stop.is_set
                )
            return RayWorker(
                ray, model, self.limits, self.config, log_dir / f"actor{index}-{key}.log", per_actor
            )

        try:
            self._pool.run(groups, n_slots, make_worker, params, on_result)
        finally:
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False
