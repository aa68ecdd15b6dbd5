"""The generation worker: the in-worker core (`serve_batch`) and the process that runs it.

A worker is a child process (spawn context) that loads one model once and answers batches of jobs. The
parent alone renders prompts and receives results; a worker never writes to the tracker. The worker's
stdout and stderr go to a file (with faulthandler on), so the tail of what it printed survives a segfault.
A worker never outlives its parent (`die_with_parent`). The parent's side of a worker process is
runner.generation.executors.process.ProcessWorker.

Jobs, results and crash causes are in runner.generation.jobs.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from runner.generation.faults import inject_fault, threshold_fault
from runner.generation.jobs import Job, JobResult, classify_exception

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from runner.generation.backends.base import Backend
    from runner.generation.prefetch import Prefetcher
    from runner.spec import Generation

STDERR_TAIL_CHARS = 8000
PARENT_CHECK_S = 0.5
"""How often the watchdog looks for its parent: the longest a worker outlives it where the kernel's
parent-death signal is not there (or was switched off by a library)."""
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LOAD_TIMEOUT_S = 1800.0
"""Longest a model may take to load (a large checkpoint from a slow disk) before its worker is killed."""


# -- the in-worker core ----------------------------------------------------------------------------------------


def _cuda_device(backend: Backend) -> str | None:
    device = str(getattr(backend, "device", "cpu"))
    torch = sys.modules.get("torch")  # a backend that never imported torch used no GPU
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return device


def host_peak_rss_mb() -> float:
    import resource

    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def padded_width(encoded: Any, jobs: list[Job]) -> int:
    """The batch's prompt length in tokens, every row padded to it: the encoded batch's width, or (for a
    backend that encodes only inside `generate`) the longest prompt in words, an estimate."""
    from runner.generation.prefetch import Encoded

    if isinstance(encoded, Encoded):
        return int(encoded.width)
    return max((len(j.prompt.split()) for j in jobs), default=0)


def measured_of(exc: BaseException) -> dict[str, float]:
    """What `serve_batch` knew of its batch when it raised `exc` (empty when it raised before encoding)."""
    found = exc.__dict__.get("pov_measured")
    return dict(found) if isinstance(found, dict) else {}


def serve_batch(
    backend: Backend,
    jobs: list[Job],
    params: Generation,
    prefetch: Prefetcher | None = None,
    ahead: list[Job] | None = None,
    on_shape: Callable[[dict[str, float]], None] | None = None,
) -> list[JobResult]:
    """Generate one batch and measure it. Raises whatever the backend (or an injected fault) raises, with
    what was measured of the batch so far attached (`measured_of`); the caller classifies it with
    `classify_exception`. Shared by the process worker and the Ray actor.

    Per cell: `latency_s` (its own time where the backend times rows, `latency_per_cell` 1; else the
    batch's, `latency_per_cell` 0), `tokens_per_s` (new_tokens / latency_s); per batch, on each of its cells:
    `batch_latency_s`, `batch_size`, `padded_prompt_tokens`, `batch_tokens_per_s` (the batch's new tokens /
    batch_latency_s).

    With a `prefetch`, the batch's inputs may already be encoded, and `ahead` (the batch the driver will
    send next) is encoded in a thread while this one generates. `on_shape` hears the batch's size and padded
    prompt tokens before it generates, so a driver knows them even if generating kills the process."""
    faulty = next((j for j in jobs if j.fault and j.fault_above_tokens is None), None)
    if faulty is not None:
        inject_fault(str(faulty.fault), faulty.cell_id)
    device = _cuda_device(backend)
    if device is not None:
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    shape: dict[str, float] = {"batch_size": float(len(jobs))}
    try:
        started = time.time()
        encoded = None
        if prefetch is not None:
            encoded = prefetch.encode(jobs, params)
            prefetch.start(ahead, params)
        shape["padded_prompt_tokens"] = float(padded_width(encoded, jobs))
        if on_shape is not None:
            on_shape(dict(shape))
        over = threshold_fault(jobs, int(shape["padded_prompt_tokens"]))
        if over is not None:
            inject_fault(str(over.fault), over.cell_id)
        if encoded is not None:
            outs = backend.generate_encoded(encoded)  # type: ignore[attr-defined]
        else:
            outs = backend.generate([j.prompt for j in jobs], params)
        ended = time.time()
    except Exception as e:
        alloc = _peak_mb(device)[0]
        e.__dict__["pov_measured"] = {
            **shape,
            "gpu_peak_allocated_mb": alloc,
            "host_rss_mb": host_peak_rss_mb(),
        }
        raise
    alloc, reserved = _peak_mb(device)
    if encoded is None:  # the backend encoded inside generate: its rows say how long the prompts were
        shape["padded_prompt_tokens"] = float(max((o.prompt_tokens for o in outs), default=0))
    # A backend that timed each row gives each its own latency and the batch's wall time apart; one that
    # could not gives the batch's wall time as every row's latency, and says so (latency_per_cell 0).
    per_cell = all(o.batch_latency_s is not None for o in outs)
    batch_s = max((o.batch_latency_s if per_cell else o.latency_s) or 0.0 for o in outs)
    shared = {
        "gpu_peak_allocated_mb": alloc,
        "gpu_peak_reserved_mb": reserved,
        "host_rss_mb": host_peak_rss_mb(),
        "batch_size": float(len(jobs)),
        "padded_prompt_tokens": shape["padded_prompt_tokens"],
        "batch_latency_s": batch_s,
        "batch_tokens_per_s": sum(o.new_tokens for o in outs) / batch_s if batch_s > 0 else 0.0,
        "latency_per_cell": float(per_cell),
    }
    info = backend.info() if hasattr(backend, "info") else {}
    results = []
    for job, out in zip(jobs, outs, strict=True):
        metrics = {
            "latency_s": out.latency_s,
            "prompt_tokens": float(out.prompt_tokens),
            "new_tokens": float(out.new_tokens),
            "tokens_per_s": out.tokens_per_s,
            "prompt_truncated": float(out.prompt_truncated),
            **shared,
            **info,
        }
        results.append(
            JobResult(
                job.cell_id, "finished", output=out.text, metrics=metrics, started_at=started, ended_at=ended
            )
        )
    return results


def _peak_mb(device: str | None) -> tuple[float, float]:
    """Peak GPU memory (allocated, reserved) in MiB since the batch began; zeros without a GPU."""
    if device is None:
        return 0.0, 0.0
    import torch

    return (
        torch.cuda.max_memory_allocated(device) / 2**20,
        torch.cuda.max_memory_reserved(device) / 2**20,
    )


def _fatal_cuda_error(exc: BaseException) -> bool:
    """After these the CUDA context is unusable and only a new process can go on."""
    text = str(exc)
    return any(
        s in text
        for s in ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS", "cuDNN error")
    )


def read_tail(path: Path, offset: int, limit: int = STDERR_TAIL_CHARS) -> str:
    """The end of what was written to `path` after `offset`."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - limit * 4))
            return fh.read().decode("utf-8", errors="replace")[-limit:]
    except OSError:
        return ""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- the child process -------------------------------------------------------------------------------------------
def die_with_parent(parent_pid: int | None, conn: Connection) -> None:
    """End this worker when `parent_pid` dies, whatever the worker is doing: a `pov run` killed with SIGKILL
    in the middle of a long batch must not leave a process holding a GPU's memory.

    Two mechanisms, because either alone misses a case. On Linux the kernel sends SIGKILL when the parent
    goes (PR_SET_PDEATHSIG): it works while the main thread holds the GIL in native code, where no Python
    thread can run. Everywhere, a watchdog thread leaves when the parent's pid is no longer our parent or
    the pipe to it hangs up: it covers other systems and a library that clears the signal. The parent starts
    workers from a thread that lives as long as it does (runner.generation.executors.process), since the
    kernel sends the signal when the *thread* that forked us ends."""
    if parent_pid is None:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc prctl: the watchdog still runs
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before the signal was asked for: then we were re-parented already.
    if os.getppid() != parent_pid:
        os._exit(1)
    try:
        fd = os.dup(conn.fileno())  # our own descriptor: the main thread may close its connection
    except (OSError, ValueError):
        fd = -1
    watchdog = threading.Thread(
        target=_watch_parent, args=(parent_pid, fd), name="pov-parent-watchdog", daemon=True
    )
    watchdog.start()


def _watch_parent(parent_pid: int, fd: int) -> None:
    poller: Any = None
    hangup = 0
    if fd >= 0 and hasattr(select, "poll"):
        poller = select.poll()
        hangup = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
        # Hang-ups only, not POLLIN: the messages on the pipe are the main thread's to read.
        poller.register(fd, hangup)
    while True:
        if os.getppid() != parent_pid:
            _leave(f"its parent {parent_pid} is gone")
        if poller is None:
            time.sleep(PARENT_CHECK_S)
            continue
        for _, events in poller.poll(PARENT_CHECK_S * 1000):
            if events & hangup:
                _leave(f"the pipe to its parent {parent_pid} closed")
            if events & select.POLLNVAL:  # not a descriptor any more: watch the pid alone
                poller = None


def _leave(why: str) -> NoReturn:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"pov worker {os.getpid()}: exiting, {why}\n")
        sys.stderr.flush()
    os._exit(1)


def redirect_output(path: str) -> None:
    # dup2 onto fds 1 and 2 so that native code (CUDA, faulthandler) writes there too, not only Python.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115


def cap_gpu_memory(gpu_memory_gb: float | None, device: str | None) -> None:
    import torch

    if not gpu_memory_gb or not torch.cuda.is_available():
        return
    index = torch.device(device if device and device.startswith("cuda") else "cuda:0").index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, gpu_memory_gb * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    print(
        f"pov worker: CUDA memory capped at {gpu_memory_gb} GiB ({fraction:.3f} of device {index})",
        file=sys.stderr,
    )


def worker_main(
    conn: Connection,
    model_data: dict[str, Any],
    device: str | None,
    cuda_visible: str | None,
    gpu_memory_gb: float | None,
    stderr_path: str,
    parent_pid: int | None = None,
) -> None:
    """Entry point of the worker process: load the model once, then answer batches until told to stop."""
    die_with_parent(parent_pid, conn)
    redirect_output(stderr_path)
    import faulthandler
    import traceback

    faulthandler.enable(all_threads=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    if cuda_visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible  # before anything imports torch
    if device != "cpu":
        # Unsloth turns the tokenizer's threads off unless told otherwise; on a GPU worker the CPU cores
        # are idle, and a batch's first tokenization is on the critical path (runner.generation.prefetch hides the rest).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from runner.spec import Generation, Model

    model = Model.model_validate(model_data)
    try:
        from runner.generation.backends import backend_class

        if model.backend == "unsloth":
            from runner.generation.backends.unsloth import preimport

            preimport()  # before transformers is imported anywhere in this process
        backend_cls = backend_class(model.backend)
        warm = getattr(sys.modules[backend_cls.__module__], "warm_imports", None)
        if warm is not None:
            warm()
    except BaseException as e:
        traceback.print_exc()
        conn.send(("load_failed", *classify_exception(e)))
        return
    # Imports done: a spare worker waits here, ready to take over from a crashed one in a moment.
    conn.send(("warm",))
    try:
        if conn.recv()[0] != "load":
            _exit_now(0)
    except (EOFError, OSError):
        _exit_now(0)
    print(
        f"pov worker {os.getpid()}: loading {model.name} ({model.backend}) on {device or 'auto'}",
        file=sys.stderr,
    )
    try:
        cap_gpu_memory(gpu_memory_gb, device)
        backend = backend_cls(model, device)
    except BaseException as e:
        traceback.print_exc()
        conn.send(("load_failed", *classify_exception(e)))
        return
    _share_cpu(str(getattr(backend, "device", "cpu")))
    from runner.generation.prefetch import Prefetcher

    prefetch = Prefetcher(backend)
    conn.send(("ready", backend.device, backend.info() if hasattr(backend, "info") else {}))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            _exit_now(0)  # the parent is gone
        if msg[0] == "stop":
            _exit_now(0)
        _, batch_id, jobs, params_data, ahead = msg
        crash: tuple[str, str, bool, dict[str, float]] | None = None

        def tell_shape(shape: dict[str, float], batch_id: int = batch_id) -> None:
            conn.send(("shape", batch_id, shape))

        try:
            params = Generation.model_validate(params_data)
            results = serve_batch(backend, jobs, params, prefetch, ahead, on_shape=tell_shape)
        except Exception as e:
            traceback.print_exc()
            sys.stderr.flush()
            cause, error = classify_exception(e)
            crash = (cause, error, _fatal_cuda_error(e) and cause != "cuda_oom", measured_of(e))
        if crash is None:
            conn.send(("results", batch_id, results))
            continue
        # Outside the except block: the traceback's frames (holding the batch's tensors) are gone by now.
        release_memory()
        conn.send(("crashed", batch_id, *crash))
        if crash[2]:
            _exit_now(3)


def _exit_now(status: int) -> NoReturn:
    """End the worker without the interpreter's teardown: its only state is the loaded model, and unloading
    the libraries (torch, CUDA, Unsloth's hooks) took 2 to 3 s on the GPU machine, which a run that stops
    its workers at the end waited for. The driver frees the process's GPU memory."""
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(Exception):  # a failed cleanup must not keep the worker alive
        from multiprocessing import util

        # Unlink the semaphores that libraries made here: else the parent's resource tracker prints a
        # "leaked semaphore" warning when `pov run` exits.
        util._run_finalizers(0)  # type: ignore[attr-defined]
    os._exit(status)


def _share_cpu(device: str) -> None:
    """A CPU worker leaves one core to the parent, which embeds answers for the output checks while the
    next batch generates: with every core taken by both, OpenMP threads spin against each other and
    generation slows down many times over."""
    torch = sys.modules.get("torch")
    cores = os.cpu_count() or 1
    if torch is not None and device == "cpu" and cores > 1:
        torch.set_num_threads(min(torch.get_num_threads(), cores - 1))


def release_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
