"""What runs inside a Ray worker process: the generation actor, and how its death is read.

The actor loads one model once (from the node's copy of a shipped folder, or from the path the spec's model
has, per `executor.model_files`), then answers batches with the same code as a local worker
(runner.generation.worker.serve_batch).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from runner.generation.jobs import Job, JobResult


class GenerationActor:
    """Lives in a Ray worker process: loads one model once, then answers batches."""

    def __init__(
        self,
        model_data: dict[str, Any],
        gpu_memory_gb: float | None,
        log_path: str | None,
        shipped: tuple[str, bytes] | None = None,
    ) -> None:
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
        if shipped is not None:  # the driver's folder, sent through the object store: this node's copy
            from runner.generation.executors.ray_cluster import unpack_folder

            model = model.model_copy(update={"name": str(unpack_folder(*shipped))})
        self.model_path = model.name
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

    def ready(self) -> tuple[str, dict[str, float], int, dict[str, str]]:
        """(device, backend info, pid, where: this node's id and IP, the model folder loaded, the code's)."""
        import ray

        info = self.backend.info() if hasattr(self.backend, "info") else {}
        where = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "model_path": self.model_path,
            "code": str(Path(__file__).resolve().parents[2]),
            "cwd": os.getcwd(),
        }
        return str(getattr(self.backend, "device", "cpu")), info, os.getpid(), where

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
