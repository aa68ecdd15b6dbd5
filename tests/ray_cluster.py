"""A real multi-node Ray cluster on one machine, for tests and benchmarks: a head node and worker nodes, each a
`ray start --block` process of its own with its own node IP (loopback addresses 127.0.0.x), temp dir, working
directory and custom resource (`pov_node_<name>`: an actor that asks for it lands on that node).

A worker node can be started in a mount namespace of its own (`hide=`) where the given folders are empty
tmpfs mounts: what the driver has there (the project, its model cache, the code of this checkout) cannot be
read by anything on that node, as on a separate host. Token authentication is on, with a token of the
cluster's own (not the shared ~/.ray one).

`stop()` ends every process of every node (each node is a process session of its own) and checks that none is
left; it is safe to call twice and after a failed start.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAY = str(Path(sys.executable).with_name("ray"))
NODE_DROPS = ("PYTHONPATH", "POV_MODEL_CACHE", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    ip: str
    cpus: int = 1
    gpus: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    """Custom resources beside `pov_node_<name>`."""
    hide: list[Path] = field(default_factory=list)
    """Folders this node must not see (empty tmpfs mounts over them in its own mount namespace)."""
    proc: subprocess.Popen[bytes] | None = None
    cwd: Path | None = None
    temp_dir: Path | None = None

    @property
    def resource(self) -> str:
        return f"pov_node_{self.name}"


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, by reading /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _session_members(sid: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[4]) == sid:
            members.add(int(entry.name))
    return members


class LocalCluster:
    """Head plus worker nodes as `ray start` processes. `env()` is what a driver needs to join it."""

    def __init__(self, root: Path, workers: list[Node], head_cpus: int = 1, head_gpus: int = 0) -> None:
        self.root = root
        self.token = root / "auth_token"
        self.head = Node("head", "127.0.0.1", head_cpus, head_gpus)
        self.workers = workers
        self.port = free_port()
        self.sessions: set[int] = set()

    @property
    def nodes(self) -> list[Node]:
        return [self.head, *self.workers]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """A driver's environment: this process's, with the cluster's token and address."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token),
            RAY_USAGE_STATS_ENABLED="0",
            RAY_ADDRESS=self.address,
            HF_HUB_OFFLINE="1",
        )
        return env

    def node_env(self, node: Node) -> dict[str, str]:
        """A node's environment: nothing of the driver's code or model cache, a model cache of its own."""
        env = {k: v for k, v in self.env().items() if k not in NODE_DROPS}
        env["POV_NODE_CACHE"] = str(self.cache(node))
        return env

    def cache(self, node: Node) -> Path:
        return self.root / f"cache-{node.name}"

    def start(self, timeout_s: float = 120.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.token.write_text(secrets.token_hex(32))
        try:
            self._start_node(self.head, head=True)
            self.wait_for(1, timeout_s)
            for node in self.workers:
                self._start_node(node, head=False)
            self.wait_for(len(self.nodes), timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start_node(self, node: Node, *, head: bool) -> None:
        node.cwd = self.root / f"cwd-{node.name}"
        node.temp_dir = self.root / f"tmp-{node.name}"
        node.cwd.mkdir(parents=True, exist_ok=True)
        # Every port a node opens is a free one: other Ray clusters may be running on this machine.
        ports = [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            # Workers' ports below the ephemeral range free_port() draws from, a block of 100 per node.
            f"--min-worker-port={(base := 20000 + 100 * secrets.randbelow(100))}",
            f"--max-worker-port={base + 99}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        args = [
            RAY,
            "start",
            "--block",
            f"--node-ip-address={node.ip}",
            f"--temp-dir={node.temp_dir}",
            f"--num-cpus={node.cpus}",
            f"--num-gpus={node.gpus}",
            f"--resources={json.dumps({node.resource: 1, **node.extra})}",
            "--disable-usage-stats",
            "--include-log-monitor=false",
            *ports,
        ]
        if head:
            args += [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
            ]
        else:
            args += [f"--address={self.address}"]
        if node.hide:
            mounts = " && ".join(f"mount -t tmpfs -o size=1m none '{p}'" for p in node.hide)
            args = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'{mounts} && exec "$@"',
                "sh",
                *args,
            ]
        log = open(self.root / f"{node.name}.log", "wb")  # noqa: SIM115 - the node's lifetime
        node.proc = subprocess.Popen(
            args,
            cwd=node.cwd,
            env=self.node_env(node),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.sessions.add(node.proc.pid)

    def restart(self, node: Node, timeout_s: float = 120.0) -> None:
        """Start a node again after it was killed (what is left of it is killed first)."""
        self.kill_node(node)
        if node.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
        self._start_node(node, head=False)
        self.wait_for(len(self.nodes), timeout_s)

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The nodes the cluster's GCS counts alive (through `ray list nodes`-free means: a driver script)."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False);"
            "print(json.dumps([n for n in ray.nodes() if n['Alive']]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            return []
        return list(json.loads(out.stdout.strip().splitlines()[-1]))

    def available(self) -> dict[str, float]:
        """The cluster's free resources, as a new driver sees them."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False);"
            "print(json.dumps(ray.available_resources()))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=120
        )
        return dict(json.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else {}

    def wait_for(self, n_alive: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited:\n{self.log(node)}")
            if len(self.alive_nodes()) >= n_alive:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{n_alive} Ray nodes not up within {timeout_s:.0f} s:\n{self.log(self.head)}"
                )
            time.sleep(0.5)

    def log(self, node: Node) -> str:
        path = self.root / f"{node.name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def processes(self, node: Node | None = None) -> set[int]:
        """Live processes of one node (or of every node): its `ray start` session and whatever it forked."""
        pids: set[int] = set()
        for n in [node] if node else self.nodes:
            if n.proc is None:
                continue
            pids |= _session_members(n.proc.pid) | _descendants(n.proc.pid)
            if n.proc.poll() is None:
                pids.add(n.proc.pid)
        return pids

    def raylet_pid(self, node: Node) -> int:
        for pid in self.processes(node):
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if exe.endswith(b"/raylet"):
                return pid
        raise LookupError(f"no raylet for node {node.name}")

    def kill_node(self, node: Node, *, raylet_only: bool = False) -> None:
        """SIGKILL a node's raylet, or every process of the node at once (a host lost)."""
        if raylet_only:
            os.kill(self.raylet_pid(node), signal.SIGKILL)
            return
        for pid in self.processes(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, timeout_s: float = 30.0) -> set[int]:
        """End every node; return the pids still alive after that (should be none)."""
        for node in reversed(self.nodes):
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.processes():
            time.sleep(0.2)
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(timeout=10)
        time.sleep(0.2)
        left = self.processes() | self.stray()
        return left

    def stray(self) -> set[int]:
        """Processes anywhere that name this cluster's folders (a worker that left its session)."""
        marker = str(self.root).encode()
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if marker in cmd and stat[0] != "Z":
                found.add(int(entry.name))
        return found

    def cleanup_files(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
