"""One execution, one writer: the process that runs a spec's execution holds an OS lock on it throughout.

The lock is `flock` on `<state_dir>/locks/<spec name>-<spec hash>.lock`, taken without waiting: a second
`pov run` (or resume, or `pov rerun`) of the same spec is refused at once, before it writes anything, with a
message naming the holder from the file's text (pid, host, since). The kernel releases a flock when its
holder dies, kill -9 included, so a lock left by a killed run is simply taken over and its stale text
overwritten. The file itself is never deleted: unlinking a locked file lets two processes each lock a
different file of the same name.

A flock lives as long as any descriptor of its open file: the descriptor is close-on-exec, so workers
(spawned, or started by Ray) never hold it and a worker that outlives its run cannot keep the lock.

The process that holds the lock may take it again (a no-op): `pov run` takes it as soon as the spec is
loaded, so that a second run is refused before the engine's libraries are imported, and `run_experiment`
takes it for every other caller (`pov rerun`, the library).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError
from runner.generation import pid_alive

if TYPE_CHECKING:
    from runner.spec import Experiment

log = logging.getLogger(__name__)

HOLDER_WRITE_S = 1.0
"""How long a refused process waits for the holder's text: it is written right after the lock is taken,
so a refusal in that instant would find the file empty."""


_held: dict[Path, int] = {}  # lock file -> how many times this process holds it
_held_guard = threading.Lock()


def lock_path(exp: Experiment) -> Path:
    return exp.state_dir / "locks" / f"{exp.spec.name}-{exp.spec_hash}.lock"


@contextlib.contextmanager
def execution_lock(exp: Experiment) -> Iterator[Path]:
    """Hold the lock of `exp`'s execution for the body; raise UserError at once if another process holds it."""
    path = lock_path(exp)
    with _held_guard:
        again = path in _held
        if again:
            _held[path] += 1
    if again:
        try:
            yield path
        finally:
            with _held_guard:
                _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(refusal(_holder(fd), path)) from None
        except OSError as e:  # a filesystem without locks (some network mounts): run, but say so
            log.warning("cannot lock %s (%s): a second pov run of this spec would not be refused", path, e)
            locked = False
        if locked:
            _write_holder(fd)
        with _held_guard:
            _held[path] = 1
        try:
            yield path
        finally:
            with _held_guard:
                del _held[path]
            if locked:  # an empty file says nobody holds it; the lock itself goes with the descriptor
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _write_holder(fd: int) -> None:
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (text + "\n").encode(), 0)
    except OSError as e:  # a full disk: the lock holds all the same, only the refusal names nobody
        log.warning("cannot write who holds the execution lock: %s", e)


def _holder(fd: int) -> dict[str, Any]:
    deadline = time.monotonic() + HOLDER_WRITE_S
    while True:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        except (OSError, ValueError):
            holder = None
        # The text of a killed holder stays in the file until the next holder overwrites it, an instant
        # after taking the lock: a dead pid on this host means that instant, so read again.
        if isinstance(holder, dict) and _alive(holder):
            return holder
        if time.monotonic() > deadline:
            return holder if isinstance(holder, dict) else {}
        time.sleep(0.05)


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True  # another machine's process (a shared filesystem): nothing to check it against
    return pid_alive(pid)


def refusal(holder: dict[str, Any], path: Path) -> str:
    """The message of a refused run: who holds the execution, since when, and what to do."""
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = holder.get("since")
    if isinstance(since, (int, float)):
        at = dt.datetime.fromtimestamp(since)
        same_day = at.date() == dt.date.today()
        who += f", since {at.strftime('%H:%M:%S' if same_day else '%Y-%m-%d %H:%M:%S')}"
    return f"another pov run ({who}) is running this spec's execution; wait for it or stop it (lock: {path})"
