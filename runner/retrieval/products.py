"""The scoring core's numpy products, threaded by size and by how busy the cores are.

numpy hands a product to its BLAS (OpenBLAS in the wheels), which splits even a small one across every core
and then waits for all of its threads. On a machine whose cores are busy, one of them waits for the scheduler:
a (1,000 x 1,024) @ (1,024 x 16) product took 0.2 ms with both of a 2-core machine's cores free and 12-20 ms
(median) with both busy. So, by the size of the large operand:

- under THREADED_MIN_BYTES the product runs on one BLAS thread per core that other processes left idle
  over the last tenth of a second (threadpoolctl; `OtherLoad`), one when the others are busy: 0.2 ms on that
  machine when it is quiet, 0.36 ms on one thread when it is not, never a wait for a busy core;
- from THREADED_MIN_BYTES on, its rows are cut into blocks of BLOCK_ROWS that one Python thread per core
  takes in turn, each block's product on one BLAS thread. What else a row needs (its norm) is computed while
  its block is still in cache, so the operand is read from memory once; a thread whose core is busy simply
  takes fewer blocks.

The BLAS thread count is process-wide, and threadpoolctl lets one Python thread at a time change it: while
one thread's product runs on one BLAS thread, another thread's numpy products do too, and a product scored
while another thread holds the limit runs with whatever count that thread set (slower, never wrong).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

THREADED_MIN_BYTES = 32 << 20
"""Operands from this size are split across cores. Below it the whole product takes a few milliseconds on
one core, which is less than a wait for a busy core can cost."""
BLOCK_ROWS = 1024
"""Rows per block: 4 MB at d = 1,024 in float32, which stays in cache between the product and the norms."""


@functools.lru_cache(maxsize=1)
def _blas() -> Any:
    """numpy's BLAS as threadpoolctl sees it (None where threadpoolctl finds none it can control)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a declared dependency; without it products keep the BLAS's own threading
        return None
    found = ThreadpoolController().select(user_api="blas")
    return found if found.lib_controllers else None


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """numpy products inside run on one BLAS thread (threadpoolctl's limit, restored on the way out)."""
    blas = _blas()
    return blas.limit(limits=1) if blas is not None else contextlib.nullcontext()


def idle_blas_threads() -> contextlib.AbstractContextManager[Any]:
    """numpy products inside run on one BLAS thread per core idle lately (at least one): for a product small
    enough that a wait for a busy core would cost more than it does. The BLAS count is left alone when it is
    already that (setting it wakes OpenBLAS's threads: a third of a 0.25 ms product)."""
    blas = _blas()
    if blas is None:
        return contextlib.nullcontext()
    want = idle_cores(cores())
    if all(int(lib.num_threads) == want for lib in blas.lib_controllers):
        return contextlib.nullcontext()
    return blas.limit(limits=want)  # type: ignore[no-any-return]


class OtherLoad:
    """How many cores the rest of the machine kept busy lately: the machine's busy CPU time (Linux's
    /proc/stat) less this process's own (getrusage, which counts its BLAS threads that spin between
    products), over the last WINDOW_S or more. /proc/stat counts in ticks of 10 ms, so a shorter interval
    says nothing; the window's start moves on once it is that old. Before the first window has passed,
    the other cores count as busy (one thread: slower on an idle core, never waiting for a busy one)."""

    WINDOW_S = 0.1
    RECHECK_S = 0.01
    """Calls closer together than this get the last answer: reading /proc/stat costs 50 us."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start: tuple[float, float, float] | None = None
        self._cores_busy: float | None = None
        self._checked = -1.0

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(monotonic seconds, busy CPU seconds of the machine, CPU seconds of this process)."""
        try:
            with open("/proc/stat", "rb") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is in user already
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), busy, usage.ru_utime + usage.ru_stime

    def cores_busy(self) -> float | None:
        """Cores' worth of CPU time that other processes used in the last window; None until one passed."""
        with self._lock:
            if time.monotonic() - self._checked < self.RECHECK_S:
                return self._cores_busy
            self._checked = time.monotonic()
        now = self._sample()
        if now is None:
            return None
        with self._lock:
            if self._start is None:
                self._start = now
            elif now[0] - self._start[0] >= self.WINDOW_S:
                elapsed = now[0] - self._start[0]
                others = (now[1] - self._start[1]) - (now[2] - self._start[2])
                self._cores_busy = max(0.0, others / elapsed)
                self._start = now
            return self._cores_busy


_other_load = OtherLoad()


def idle_cores(n: int) -> int:
    """Of `n` cores, one for the calling thread plus those the rest of the machine left idle lately (half a
    core's use or more counts as busy); 1 while that is not known yet."""
    busy = _other_load.cores_busy()
    if busy is None:
        return 1
    return max(1, min(n, n - math.floor(busy + 0.5)))


def cores() -> int:
    """Threads worth starting: the cores this process may use, capped by the BLAS's own thread count (so
    that OPENBLAS_NUM_THREADS=1 keeps everything on one core)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    blas = _blas()
    if blas is not None:
        n = min(n, max(int(lib.num_threads) for lib in blas.lib_controllers))
    return max(1, n)


def map_row_blocks(
    rows: np.ndarray, per_block: Callable[[np.ndarray], np.ndarray], dtype: np.dtype[Any]
) -> np.ndarray:
    """`per_block(block)` -> one value per row, for the (N, d) `rows`, as one (N,) array of `dtype`: all at
    once on the idle cores' BLAS threads for a small operand, else block by block on every core (see the
    module docstring)."""
    n = rows.shape[0]
    threads = cores() if rows.nbytes >= THREADED_MIN_BYTES else 1
    if threads == 1 or n <= BLOCK_ROWS:
        with idle_blas_threads():
            return np.asarray(per_block(rows), dtype=dtype)
    out = np.empty(n, dtype=dtype)
    starts: Iterator[int] = iter(range(0, n, BLOCK_ROWS))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not errors:
                with lock:
                    start = next(starts, None)
                if start is None:
                    return
                out[start : start + BLOCK_ROWS] = per_block(rows[start : start + BLOCK_ROWS])
        except BaseException as e:  # handed to the caller below
            errors.append(e)

    pool = [threading.Thread(target=work, name=f"pov-scoring-{i}", daemon=True) for i in range(threads)]
    with one_blas_thread():
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    if errors:
        raise errors[0]
    return out
