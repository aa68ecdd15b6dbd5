"""`pov serve`: a process that keeps generation workers loaded between runs, as a notebook keeps its model.

Starting a worker means importing torch and transformers (and Unsloth), creating a CUDA context and loading
the weights: tens of seconds to minutes, paid by every `pov run` that starts its own workers. The server
owns ordinary worker processes (runner.generation.executors.process) in a SlotPool with `keep_workers`, so crash
causes are classified exactly as in a local run, and serves one run at a time over an authenticated Unix
socket (multiprocessing.connection). `pov run` uses it when one is running for the project
(runner.generation.executors.serve_client).

Wire protocol (pickled tuples): the client sends ("run", groups, params, limits), ("preload", models,
limits), ("status",) or ("shutdown",); during a run it may send ("stop",). The server answers a run with
("results", [JobResult]) messages, then ("done", info) or ("error", text).

Discovery (serve.json, the socket's path): runner.generation.server_info.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.generation.server_info import find_server, info_path, socket_path

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from runner.spec import Limits, Model


class Server:
    """Serves runs with workers that stay loaded; exits after `idle_timeout_s` without a request."""

    def __init__(self, state_dir: Path, gpus: list[int] | None, idle_timeout_s: float) -> None:
        from runner.generation.executors.local import LocalExecutor

        self.state_dir = state_dir
        self.idle_timeout_s = idle_timeout_s
        self.executor = LocalExecutor(gpus, log_dir=state_dir / "serve" / "workers")
        self.address = socket_path(state_dir)
        self.key = secrets.token_bytes(32)
        self.started = time.time()
        self.runs = 0
        self._incoming: queue.Queue[Connection] = queue.Queue()
        self._done = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def serve(self, on_ready: Any = None) -> None:
        from multiprocessing.connection import Listener

        if find_server(self.state_dir) is not None:
            from runner.errors import UserError

            raise UserError(
                f"a pov serve is already running for {self.state_dir.parent} (pov serve --status)"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)  # left by a server that was killed
        listener = Listener(self.address, family="AF_UNIX", authkey=self.key)
        os.chmod(self.address, 0o600)
        self._write_info()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self._done.set())
        threading.Thread(target=self._accept, args=(listener,), name="pov-serve-accept", daemon=True).start()
        if on_ready is not None:
            on_ready(self)
        try:
            idle_since = time.monotonic()
            while not self._done.is_set():
                try:
                    conn = self._incoming.get(timeout=0.5)
                except queue.Empty:
                    if time.monotonic() - idle_since > self.idle_timeout_s:
                        print(f"pov serve: idle for {self.idle_timeout_s:.0f} s, stopping", file=sys.stderr)
                        break
                    continue
                with conn:
                    self._handle(conn)
                idle_since = time.monotonic()
        finally:
            self._done.set()
            self.executor.shutdown()  # frees every GPU it held
            with contextlib.suppress(OSError):
                listener.close()
            for path in (info_path(self.state_dir), Path(self.address)):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _accept(self, listener: Any) -> None:
        while not self._done.is_set():
            try:
                self._incoming.put(listener.accept())
            except OSError:
                return  # closed
            except Exception as e:  # a client with the wrong key, or one that hung up mid-handshake
                print(f"pov serve: refused a connection ({type(e).__name__}: {e})", file=sys.stderr)

    def _write_info(self) -> None:
        path = info_path(self.state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.status(), fh)
        os.replace(tmp, path)

    def status(self) -> dict[str, Any]:
        held = [
            {"slot": index, "model": getattr(worker.model, "name", "?"), "loaded": bool(worker.alive)}
            for index, worker in self.executor.held()
        ]
        return {
            "pid": os.getpid(),
            "socket": self.address,
            "key": self.key.hex(),
            "started": self.started,
            "runs": self.runs,
            "slots": [device for device, _ in self.executor.slots()],
            "workers": held,
        }

    # -- requests ----------------------------------------------------------------------------------------
    def _handle(self, conn: Connection) -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "status":
            conn.send(("status", {k: v for k, v in self.status().items() if k != "key"}))
        elif kind == "shutdown":
            conn.send(("done", {}))
            self._done.set()
        elif kind == "preload":
            self._preload(message[1], message[2])
            conn.send(("done", {}))
        elif kind == "run":
            self._run(conn, *message[1:])
        else:
            conn.send(("error", f"unknown request {kind!r}"))

    def _set_limits(self, limits: Limits) -> None:
        self.executor.set_limits(limits)

    def _preload(self, models: dict[str, Any], limits_data: dict[str, Any]) -> None:
        from runner.spec import Limits, Model

        self.preload(
            {key: Model.model_validate(data) for key, data in models.items()},
            Limits.model_validate(limits_data),
        )

    def preload(self, models: dict[str, Model], limits: Limits) -> None:
        """Load these models now (one per slot) and wait for them; a model that fails to load is reported
        here and tried again by the run that needs it, which records the failure."""
        from runner.generation.jobs import WorkerCrash
        from runner.generation.model_files import cache_folder_hashes

        self._set_limits(limits)
        self.executor.prestart(models)
        # While the workers import and load: the manifest's hash of each local model, for the first run.
        cache_folder_hashes(self.state_dir, [Path(m.name) for m in models.values()])
        for _, worker in self.executor.held():
            if worker.alive:
                continue
            try:
                worker.start()
            except WorkerCrash as e:
                print(f"pov serve: {worker.model.name} did not load: {e.error}", file=sys.stderr)
        self._write_info()

    def _run(
        self,
        conn: Connection,
        groups_data: dict[str, Any],
        params_data: dict[str, Any],
        limits: dict[str, Any],
    ) -> None:
        from runner.spec import Generation, Limits, Model

        self._set_limits(Limits.model_validate(limits))
        groups = {key: (Model.model_validate(m), jobs) for key, (m, jobs) in groups_data.items()}
        executor = self.executor
        client_gone = threading.Event()

        def watch() -> None:
            # ("stop",) or a closed connection ends the run; the batch in flight is abandoned.
            try:
                while not client_gone.is_set():
                    if conn.poll(0.2) and conn.recv()[0] == "stop":
                        break
            except (EOFError, OSError):
                pass
            client_gone.set()
            executor.request_stop()

        def send(results: list[Any]) -> None:
            if client_gone.is_set():
                return
            try:
                conn.send(("results", results))
            except (OSError, ValueError):
                client_gone.set()
                executor.request_stop()

        self.executor.prestart({key: model for key, (model, jobs) in groups.items() if jobs})
        restarts = executor.restarts
        watcher = threading.Thread(target=watch, name="pov-serve-watch", daemon=True)
        watcher.start()
        try:
            self.executor.run(groups, Generation.model_validate(params_data), send, keep_workers=True)
            if not client_gone.is_set():
                conn.send(("done", {"restarts": executor.restarts - restarts, "server_pid": os.getpid()}))
        except Exception as e:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("error", f"{type(e).__name__}: {e}"))
        finally:
            client_gone.set()
            watcher.join(timeout=5)
            self.runs += 1
            self._write_info()
