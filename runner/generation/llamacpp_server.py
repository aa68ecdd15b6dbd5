"""A llama.cpp server that pov-runner starts itself, for a `backend: openai` model with a `server:` block.

The server is llama.cpp's own C++ server, embedded by `xllamacpp` (the `llamacpp` extra): continuous
batching over `server.parallel` slots, OpenAI's `/v1/chat/completions`, `/health`, `/metrics`. It runs in a
child process of its own (spawn), never in the run's process, so that a crash in native code is a crash of
the server, classified by how it died, and the run goes on; and so that its memory is its own to measure.

It never outlives its parent: the child asks the kernel for SIGKILL when its parent dies and watches the pipe
to it (runner.generation.worker.die_with_parent), and is started from a thread that lasts as long as the
parent (runner.generation.executors.process.start_from_lasting_thread), since the kernel sends that signal
when the *thread* that forked it ends. A `pov run` killed with SIGKILL takes its server with it; a `pov serve`
keeps its server up between runs, as it keeps its workers.

It listens on 127.0.0.1 on a port the kernel picks (port 0: no race for a "free" port with another process),
behind a random API key that lives only in the two processes' memory, so that other users of the machine
cannot use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from runner.generation.jobs import LoadFailed, classify_exit
from runner.generation.worker import die_with_parent, file_size, read_tail, redirect_output

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

INSTALL_HINT = "pip install 'pov-runner[llamacpp]' (xllamacpp: llama.cpp's server, a prebuilt CPU wheel)"


@dataclass(frozen=True)
class Settings:
    """How to start the server: everything that decides what it answers, and nothing secret."""

    gguf: str
    alias: str
    """The model's name in the server's answers (`/v1/models`): the spec's model `name`."""
    ctx_per_slot: int
    parallel: int
    threads: int
    gpu_layers: int
    """Layers offloaded to a GPU (a CUDA build of xllamacpp); 0 on the CPU, -1 all."""


def installed() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def version() -> str | None:
    """xllamacpp's version (it fixes the llama.cpp build), without importing it."""
    import importlib.metadata

    try:
        return importlib.metadata.version("xllamacpp")
    except importlib.metadata.PackageNotFoundError:
        return None


def default_threads() -> int:
    """Every core but one: the run's own process embeds answers for the checks while the server generates."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass
class Incarnation:
    """One server process, from its start to its death: what a request sent to it reports if it dies."""

    proc: Any
    log_path: Path
    offset: int
    """Where its lines begin in the log."""

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def alive(self) -> bool:
        return bool(self.proc.is_alive())

    def death(self) -> str:
        """How it ended, in words ("SIGKILL", "exit status 1"); waits briefly for it to end."""
        self.proc.join(2)
        code = self.proc.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit status {code}"

    def cause(self) -> str:
        """The crash cause of its death (runner.generation.jobs.classify_exit): killed, segfault, abort..."""
        self.proc.join(2)
        return classify_exit(self.proc.exitcode)[0]

    def log_tail(self) -> str:
        return read_tail(self.log_path, self.offset)


class ManagedServer:
    """The parent's handle on the server: start it (again, after a death), know whether it lives, measure it,
    stop it. `current` is the process now serving; a request remembers the one it was sent to."""

    def __init__(self, settings: Settings, log_path: Path, startup_timeout_s: float) -> None:
        self.settings, self.log_path, self.startup_timeout_s = settings, log_path, startup_timeout_s
        self.api_key = secrets.token_urlsafe(32)
        self.current: Incarnation | None = None
        self.conn: Any = None
        self.url: str | None = None
        self.version: str | None = None
        self._begun = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Spawn the server process; it loads the model while the caller does other work."""
        if self.alive:
            return
        if not installed():
            raise LoadFailed(
                "exception", f"a managed llama.cpp server needs {INSTALL_HINT}", "", worker_alive=False
            )
        import multiprocessing as mp

        from runner.generation.executors.process import start_from_lasting_thread

        self.close()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = file_size(self.log_path)
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        # The key travels through the spawn pipe with the other arguments, never on a command line.
        proc = ctx.Process(
            target=serve_main,
            name=f"pov-llamacpp-{self.log_path.stem}",
            daemon=True,
            args=(child_conn, asdict(self.settings), self.api_key, str(self.log_path), os.getpid()),
        )
        start_from_lasting_thread(proc.start)
        child_conn.close()  # so that the child's death reads as end-of-file here
        self.conn, self.url, self._begun = parent_conn, None, time.monotonic()
        self.current = Incarnation(proc, self.log_path, offset)

    def start(self) -> float:
        """Wait until the server answers; returns the seconds since `begin`. Raises LoadFailed (with the
        server's log tail) when it dies, reports a failure, or stays silent past `startup_timeout_s`."""
        if self.url is not None and self.alive:
            return 0.0
        if not self.alive:
            self.begin()
        now = self.current
        assert now is not None
        deadline = self._begun + self.startup_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                self._fail(
                    now, "timeout", f"the llama.cpp server did not answer within {self.startup_timeout_s:g} s"
                )
            try:
                msg = self.conn.recv() if self.conn.poll(min(remaining, 0.25)) else None
            except (EOFError, OSError):
                msg = None
                now.proc.join(5)
            if msg is not None and msg[0] == "ready":
                self.url, self.version = str(msg[1]), str(msg[2])
                self._wait_healthy(now, deadline)
                return time.monotonic() - self._begun
            if msg is not None:  # ("failed", "Type: message")
                self.kill()
                self._fail(now, "exception", f"the llama.cpp server did not start: {msg[1]}")
            if not now.alive:
                error = f"the llama.cpp server died while loading {self.settings.gguf} ({now.death()})"
                self._fail(now, now.cause(), error)

    def _wait_healthy(self, now: Incarnation, deadline: float) -> None:
        """Until `/health` answers 200 over HTTP (llama.cpp answers 503 while it loads)."""
        import urllib.error
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if not now.alive:
                self._fail(now, now.cause(), f"the llama.cpp server died as it started ({now.death()})")
            if time.monotonic() > deadline:
                self.kill()
                self._fail(now, "timeout", f"the llama.cpp server's /health did not answer 200 by {self.url}")
            time.sleep(0.1)

    def _fail(self, incarnation: Incarnation, cause: str, error: str) -> NoReturn:
        raise LoadFailed(cause, error, incarnation.log_tail(), worker_alive=False)

    @property
    def alive(self) -> bool:
        return self.current is not None and self.current.alive

    @property
    def pid(self) -> int | None:
        return None if self.current is None else self.current.pid

    def death(self) -> str:
        return "never started" if self.current is None else self.current.death()

    def cause(self) -> str:
        return "exception" if self.current is None else self.current.cause()

    def log_tail(self) -> str:
        return "" if self.current is None else self.current.log_tail()

    def stop(self) -> None:
        """Ask the server to exit, killing it if it does not within a few seconds."""
        if self.alive and self.current is not None:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("stop",))
            self.current.proc.join(10)
        self.kill()

    def kill(self) -> None:
        if self.alive and self.current is not None:
            self.current.proc.kill()
            self.current.proc.join(10)
        self.close()

    def close(self) -> None:
        conn, self.conn, self.url = self.conn, None, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    # -- memory --------------------------------------------------------------------------------------------
    def reset_peak_rss(self) -> None:
        """Start a new window for `peak_rss_mb`: Linux resets a process's high-water mark on `5` written to
        its clear_refs (our own child: allowed). Elsewhere the peak stays the process's lifetime peak."""
        if self.pid is not None:
            with contextlib.suppress(OSError):
                Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float | None:
        """The server process's peak resident memory since `reset_peak_rss`, MiB (None where unknown)."""
        if self.pid is None:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def gpu_memory_mb(self) -> float | None:
        """GPU memory the server process holds now, MiB, from NVML (pynvml, else nvidia-smi); None on a
        machine without an NVIDIA driver."""
        if self.pid is None or not Path("/proc/driver/nvidia/gpus").is_dir():
            return None
        return process_gpu_memory_mb(self.pid)


def process_gpu_memory_mb(pid: int) -> float | None:
    """GPU memory process `pid` holds on every GPU together, MiB, from NVML; None when NVML cannot say."""
    try:
        import pynvml

        pynvml.nvmlInit()
        total = 0.0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += proc.usedGpuMemory / 2**20
        return total
    except ImportError:
        pass
    except Exception:
        return None
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = 0.0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].replace(".", "", 1).isdigit():
            used += float(parts[1])
    return used


# -- the child process ---------------------------------------------------------------------------------------
def serve_main(
    conn: Connection, settings: dict[str, Any], api_key: str, log_path: str, parent_pid: int
) -> None:
    """Entry point of the server process: start llama.cpp's server, say where it listens, then wait to be
    told to stop (or for the parent to go)."""
    die_with_parent(parent_pid, conn)
    redirect_output(log_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    s = Settings(**settings)
    print(
        f"pov llama.cpp server {os.getpid()}: loading {s.gguf} ({s.parallel} slots of {s.ctx_per_slot} tokens, "
        f"{s.threads} threads, {s.gpu_layers} GPU layers)",
        file=sys.stderr,
        flush=True,
    )
    try:
        import xllamacpp as xlc

        params = xlc.CommonParams()
        params.model.path = s.gguf
        params.model_alias = {s.alias}
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # the kernel picks a free one; the server reports it
        params.api_keys = [api_key]
        params.n_parallel = s.parallel
        params.n_ctx = s.ctx_per_slot * s.parallel  # llama.cpp splits its context evenly over the slots
        params.cpuparams.n_threads = s.threads
        params.cpuparams_batch.n_threads = s.threads
        params.n_gpu_layers = s.gpu_layers
        params.endpoint_metrics = True
        params.ui = False
        server = xlc.Server(params)
        address = str(server.listening_address)
        conn.send(("ready", address, str(xlc.__version__)))
    except BaseException as e:
        traceback.print_exc()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{type(e).__name__}: {e}"))
        os._exit(1)
    print(f"pov llama.cpp server {os.getpid()}: listening on {address}", file=sys.stderr, flush=True)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg and msg[0] == "stop":
            break
    sys.stderr.flush()
    # No teardown: the model and the server's threads go with the process.
    os._exit(0)
