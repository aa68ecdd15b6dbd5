"""The local executor: one worker process per device (each GPU given, or all visible, else one CPU worker).

Model groups wait in one queue; each device takes the next group, starts a worker for its model, runs it
to the end, and takes another, so several groups share a device one after another. A thread per device
drives its worker; results reach the caller's `on_result` in the calling thread only, so the tracker and
the progress bar never see two threads.
"""

from __future__ import annotations

import os
import queue
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runner.executors.driver import RestartBudget, run_group
from runner.executors.process import ProcessWorker
from runner.workers import JobResult, Stopped

if TYPE_CHECKING:
    from runner.spec import Generation, Limits, Model
    from runner.workers import Job

Groups = dict[str, "tuple[Model, list[Job]]"]


def visible_gpus() -> list[str]:
    """IDs of the CUDA devices this process may use, as CUDA_VISIBLE_DEVICES would name them."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        # device_count asks the driver without creating a CUDA context here (the parent needs none).
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class LocalExecutor:
    name = "local"

    def __init__(
        self, gpus: list[int] | None = None, limits: Limits | None = None, *, log_dir: Path | None = None
    ) -> None:
        from runner.spec import Limits

        self.gpus, self.limits, self.log_dir = gpus, limits or Limits(), log_dir
        self.workers: list[ProcessWorker] = []
        self.restarts = 0
        self._stop = threading.Event()

    def slots(self) -> list[tuple[str, str | None]]:
        """(device, CUDA_VISIBLE_DEVICES for its worker) per worker slot. A worker sees only its own GPU,
        as cuda:0, so libraries that use the current device (Unsloth) pick the right one."""
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

    def run(self, groups: Groups, params: Generation, on_result: Callable[[list[JobResult]], None]) -> None:
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="pov-workers-"))
        work: queue.Queue[tuple[str, Model, list[Job]]] = queue.Queue()
        for key, (model, jobs) in groups.items():
            if jobs:
                work.put((key, model, jobs))
        results: queue.Queue[list[JobResult]] = queue.Queue()
        errors: list[BaseException] = []
        lock = threading.Lock()
        self._stop.clear()

        def slot_main(index: int, device: str, cuda_visible: str | None) -> None:
            budget = RestartBudget(self.limits.max_worker_restarts)
            while not self._stop.is_set():
                try:
                    key, model, jobs = work.get_nowait()
                except queue.Empty:
                    return
                safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
                worker = ProcessWorker(
                    model,
                    device,
                    self.limits,
                    log_dir / f"worker{index}-{safe}.log",
                    cuda_visible=cuda_visible,
                    should_stop=self._stop.is_set,
                )
                with lock:
                    self.workers.append(worker)
                try:
                    run_group(worker, jobs, params, self.limits, results.put, budget, self._stop.is_set)
                except Stopped:
                    return
                except BaseException as e:  # a bug here must not hang the run: report it to the caller
                    errors.append(e)
                    self._stop.set()
                    return
                finally:
                    worker.stop()
                    with lock:
                        self.restarts += worker.starts - 1 if worker.starts else 0

        threads = [
            threading.Thread(target=slot_main, args=(i, dev, vis), name=f"pov-slot-{i}", daemon=True)
            for i, (dev, vis) in enumerate(self.slots())
        ]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads) or not results.empty():
                try:
                    batch = results.get(timeout=0.1)
                except queue.Empty:
                    continue
                on_result(batch)
        except BaseException:
            self.shutdown()
            raise
        finally:
            for t in threads:
                t.join(timeout=30)
        if errors:
            raise errors[0]

    def shutdown(self) -> None:
        """Stop every worker now (Ctrl-C, or an error in the caller)."""
        self._stop.set()
        for worker in list(self.workers):
            worker.terminate()
