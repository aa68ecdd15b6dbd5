"""Where a project's `pov serve` is and how to reach it: `<project>/.pov/serve.json` (mode 0600: it holds
the key) names the Unix socket, the pid and the key. Used by the server itself, by the `serve` executor and
by `pov serve --status/--stop`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from runner.spec import Model

INFO_FILE = "serve.json"


def info_path(state_dir: Path) -> Path:
    return state_dir / INFO_FILE


def socket_path(state_dir: Path) -> str:
    """A short path (Unix socket paths are limited to ~107 bytes) in a directory only this user can enter."""
    folder = Path(tempfile.gettempdir()) / f"pov-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return str(folder / f"{digest}.sock")


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_server(state_dir: Path) -> dict[str, Any] | None:
    """The running server of this project (its serve.json), or None; a stale file is removed."""
    path = info_path(state_dir)
    try:
        info = json.loads(path.read_text())
        pid, address = int(info["pid"]), str(info["socket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(pid) or not Path(address).exists():
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return dict(info)


def connect(info: dict[str, Any]) -> Connection:
    from multiprocessing.connection import Client

    return Client(info["socket"], family="AF_UNIX", authkey=bytes.fromhex(info["key"]))


def request(state_dir: Path, message: tuple[Any, ...], timeout_s: float = 30.0) -> Any:
    """Send one message to the project's server and return its answer (None when none is running)."""
    info = find_server(state_dir)
    if info is None:
        return None
    conn = connect(info)
    try:
        conn.send(message)
        if not conn.poll(timeout_s):
            raise TimeoutError(f"pov serve (pid {info['pid']}) did not answer in {timeout_s:.0f} s")
        return conn.recv()
    finally:
        conn.close()


def absolute_model(model: Model) -> Model:
    """A local model folder named relative to the client's directory, made absolute for the server's."""
    path = Path(model.name)
    if not path.is_absolute() and path.exists():
        return model.model_copy(update={"name": str(path.resolve())})
    return model
