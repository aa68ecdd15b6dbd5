"""The local executor: one worker process per device (each GPU given, or all visible, else one CPU worker).

Model groups wait in one queue; each device takes the next group, starts a worker for its model, runs it
to the end, and takes another, so several groups share a device one after another. A thread per device
drives its worker; results reach the caller's `on_result` in the calling thread only, so the tracker and
the progress bar never see two threads.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from runner.generation.backends import RemoteBackend, is_remote, remote_worker
from runner.generation.executors.pool import PooledExecutor, SlotPool
from runner.generation.executors.process import ProcessWorker
from runner.generation.jobs import Groups, JobResult

if TYPE_CHECKING:
    from runner.spec import Generation, Limits, Model


GPU_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")
"""What a GPU driver torch can use leaves on Linux (glob patterns): NVIDIA's, ROCm's (`/dev/kfd`) and
WSL2's (`/dev/dxg`)."""


def gpu_driver_present() -> bool:
    """False only where no GPU can be visible: Linux without any of GPU_DRIVER_FILES (elsewhere, or when
    they cannot be looked for, assume a driver and let torch say)."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        return any(glob.glob(pattern) for pattern in GPU_DRIVER_FILES)
    except OSError:
        return True


def visible_gpus() -> list[str]:
    """IDs of the CUDA devices this process may use, as CUDA_VISIBLE_DEVICES would name them.

    torch is imported to count them only when neither CUDA_VISIBLE_DEVICES nor the absence of a driver
    answers first: importing it costs the parent a second or two before its first worker is spawned."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if not gpu_driver_present():
        return []
    try:
        import torch

        # device_count asks the driver without creating a CUDA context here (the parent needs none).
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class LocalExecutor(PooledExecutor):
    name = "local"

    def __init__(
        self,
        gpus: list[int] | None = None,
        limits: Limits | None = None,
        *,
        log_dir: Path | None = None,
        cpu_only: bool = False,
    ) -> None:
        """`cpu_only`: every model it will run says `device: cpu`, so unless GPUs are named, one CPU worker
        runs them and no GPU is counted."""
        from runner.spec import Limits

        self.gpus, self.limits, self.log_dir = gpus, limits or Limits(), log_dir
        self.cpu_only = cpu_only
        self._pool = SlotPool(self.limits)

    def slots(self) -> list[tuple[str, str | None]]:
        """(device, CUDA_VISIBLE_DEVICES for its worker) per worker slot. A worker sees only its own GPU,
        as cuda:0, so libraries that use the current device (Unsloth) pick the right one."""
        if self.cpu_only and self.gpus is None:
            return [("cpu", None)]
        visible = visible_gpus()
        if self.gpus is None:
            chosen = visible
        else:
            if any(i < 0 or i >= len(visible) for i in self.gpus):
                from runner.errors import UserError

                raise UserError(
                    f"--gpus {','.join(map(str, self.gpus))}: only {len(visible)} GPU(s) are visible"
                )
            chosen = [visible[i] for i in self.gpus]
        if not chosen:
            return [("cpu", "" if self.gpus == [] else None)]
        return [("cuda:0", gpu) for gpu in chosen]

    def _make_worker(self, log_dir: Path) -> Callable[[int, str, Model], ProcessWorker | RemoteBackend]:
        slots = self.slots()

        def make_worker(index: int, key: str, model: Model) -> ProcessWorker | RemoteBackend:
            if is_remote(model.backend):  # the model runs in a server: this process talks to it
                return remote_worker(
                    model, self.limits, log_dir / f"server{index}-{key}.log", self._pool.stop.is_set
                )
            device, cuda_visible = slots[index]
            return ProcessWorker(
                model,
                device,
                self.limits,
                log_dir / f"worker{index}-{key}.log",
                cuda_visible=cuda_visible,
                should_stop=self._pool.stop.is_set,
            )

        return make_worker

    def _log_dir(self) -> Path:
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="pov-workers-"))
        return self.log_dir

    def check(self) -> None:
        """The GPUs named exist (slots() says which do not)."""
        self.slots()

    def describe(self) -> str:
        devices = [device if cuda is None else f"GPU {cuda}" for device, cuda in self.slots()]
        return f"local worker process(es) on {', '.join(devices)}"

    def prestart(self, models: Mapping[str, Model], log_dir: Path | None = None) -> None:
        """Begin loading the run's first models now (one per device), while the run prepares its prompts."""
        if self.log_dir is None:
            self.log_dir = log_dir
        self._pool.prestart(sorted(models.items()), len(self.slots()), self._make_worker(self._log_dir()))

    def run(
        self,
        groups: Groups,
        params: Generation,
        on_result: Callable[[list[JobResult]], None],
        *,
        keep_workers: bool = False,
    ) -> None:
        self._pool.run(
            groups,
            len(self.slots()),
            self._make_worker(self._log_dir()),
            params,
            on_result,
            keep_workers=keep_workers,
        )
