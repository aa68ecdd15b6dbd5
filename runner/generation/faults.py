"""Injected faults (a spec's `faults:`, for testing crash handling end to end): what a worker really does
when a batch holds a cell that a fault picked. A fault with `above_batch_tokens` fires only in a batch of more
prompt tokens than that (batch size x padded prompt tokens), a stand-in for a memory cap on the CPU."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.generation.jobs import Job


class InjectedFault(RuntimeError):
    """An exception raised on purpose by a spec's `faults:` entry."""


def inject_fault(cause: str, cell_id: str) -> None:
    """Really do what the fault names: a signal to ourselves, an exception, or a hang."""
    note = f"injected fault {cause!r} for cell {cell_id}"
    sys.stderr.write(note + "\n")
    sys.stderr.flush()
    if cause == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif cause == "abort":
        os.kill(os.getpid(), signal.SIGABRT)
    elif cause == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    elif cause == "exception":
        raise InjectedFault(note)
    elif cause == "cuda_oom":
        import torch

        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB ({note})")
    elif cause == "timeout":
        while True:  # until the parent's deadline kills us
            time.sleep(60)
    else:
        raise ValueError(f"unknown fault cause {cause!r}")
    time.sleep(5)  # a signal to ourselves is delivered before this returns; never fall through silently
    raise RuntimeError(f"{note}: the signal did not end the process")


def threshold_fault(jobs: list[Job], width: int) -> Job | None:
    """The job whose fault fires only above a batch-token threshold, when this batch is above it."""
    tokens = len(jobs) * width
    armed = [j for j in jobs if j.fault and j.fault_above_tokens is not None]
    return next((j for j in armed if tokens > int(j.fault_above_tokens or 0)), None)
