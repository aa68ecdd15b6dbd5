"""The driver's side of a Ray cluster: joining it, checking that it can serve the spec, and what reaches
its nodes.

- **Joining**: `executor.address` (`auto`, `host:6379`, `ray://host:10001`) or none (a Ray started for the
  run). A cluster that does not answer fails `check()` within seconds (`RunAborted`, exit 1), before the run
  records anything.
- **Fit**: `executor.num_gpus` larger than any live node offers, or a custom resource (`executor.resources`)
  no node offers, is a `UserError` before any actor is placed or model loads: Ray itself would wait forever.
- **Code**: on a cluster, the driver's own `runner` package travels in the job's `runtime_env` (`py_modules`),
  so every node runs the driver's code whatever version it has installed; `HF_HUB_OFFLINE` travels too. The
  libraries (torch, transformers, Ray) must be installed on every node.
- **Model files** (`executor.model_files`): a model folder is shipped through the object store and unpacked
  into each node's cache (`ship`), or read at the same path on every node (`shared`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunAborted, UserError

if TYPE_CHECKING:
    from runner.spec import Executor, Model

CONNECT_TIMEOUT_S = 5.0
PACKAGE_DIR = Path(__file__).resolve().parents[2]
"""This process's `runner` package: what a cluster's nodes import."""
NODE_CACHE_ENV = "POV_NODE_CACHE"
"""Where a node unpacks shipped model folders (set on the node, before `ray start`); default its temp folder."""
SHIPPED_ENV = {"HF_HUB_OFFLINE": "1"}
"""Environment every actor gets: no model hub is asked for files a node lacks."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'pov-runner[ray]'") from None
    return ray


def cluster_endpoint(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a cluster address (`ray://host:10001`, `host:6379`); None for none or `auto` (Ray
    finds that one itself, from RAY_ADDRESS or the files `ray start` leaves)."""
    if not address or address == "auto":
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address if "://" in address else f"ray://{address}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (host, port) if host and port else None


def _resolve_auto(address: str) -> tuple[str, int] | None:
    """Where `auto` points (RAY_ADDRESS, else the cluster `ray start` last started here)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without it: ray.init will say
        return None
    try:
        found = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as e:
        raise RunAborted(
            f"no Ray cluster found for --address {address} ({e}): start one (`ray start --head`) or name it "
            "(--address HOST:6379, or RAY_ADDRESS)"
        ) from None
    return cluster_endpoint(found) if found else None


def probe(address: str) -> None:
    """Raise RunAborted unless the cluster's head takes a TCP connection within CONNECT_TIMEOUT_S."""
    endpoint = cluster_endpoint(address) or (_resolve_auto(address) if address == "auto" else None)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise RunAborted(
            f"the Ray cluster at {address} does not answer ({e}): start it (`ray start --head`) or fix "
            "executor.address / --address"
        ) from None


def runtime_env(on_cluster: bool) -> dict[str, Any]:
    """The job's runtime_env: the environment always; on a cluster, this process's `runner` package too."""
    env: dict[str, Any] = {"env_vars": dict(SHIPPED_ENV)}
    if on_cluster:
        env["py_modules"] = [str(PACKAGE_DIR)]
        env["excludes"] = ["__pycache__", "*.pyc"]
    return env


def connect(config: Executor) -> Any:
    """Ray, joined to the cluster `config.address` names (or to a Ray started here when it names none)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if config.address:
        probe(config.address)
    try:
        ray.init(
            address=config.address,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            runtime_env=runtime_env(bool(config.address)),
        )
    except (ConnectionError, RuntimeError, ray.exceptions.RaySystemError) as e:
        raise RunAborted(f"could not join the Ray cluster at {config.address}: {e}") from None
    return ray


def check_fit(ray: Any, config: Executor) -> None:
    """Raise UserError when no live node can hold one actor as configured (GPUs, custom resources)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    offered = ", ".join(
        f"{n.get('NodeManagerAddress', '?')}: {_fmt(n.get('Resources', {}))}"
        for n in ray.nodes()
        if n.get("Alive")
    )
    most_gpus = max((float(r.get("GPU", 0.0)) for r in nodes), default=0.0)
    need = config.num_gpus
    if most_gpus > 0 and need > 1 and need != int(need):
        raise UserError(f"executor.num_gpus = {need:g}: more than one GPU per actor must be a whole number")
    if most_gpus > 0 and need > most_gpus:
        raise UserError(
            f"executor.num_gpus = {need:g} GPUs per actor, but the largest node of the cluster offers "
            f"{most_gpus:g} (nodes: {offered}): lower executor.num_gpus or add a larger node"
        )
    for name, amount in config.resources.items():
        most = max((float(r.get(name, 0.0)) for r in nodes), default=0.0)
        if most < amount:
            raise UserError(
                f"executor.resources asks for {amount:g} {name!r} per actor, but no node offers "
                f"{'it' if most == 0 else f'more than {most:g}'} (nodes: {offered}): start a node with "
                f"`ray start --resources '{{\"{name}\": {amount:g}}}'` or change executor.resources"
            )


def _fmt(resources: dict[str, float]) -> str:
    shown = {
        k: v for k, v in resources.items() if k in ("CPU", "GPU") or not k.startswith(("node:", "memory"))
    }
    shown.pop("object_store_memory", None)
    return " ".join(f"{k}={v:g}" for k, v in sorted(shown.items()))


def ships(config: Executor, model: Model) -> bool:
    """Whether this model's folder travels to the nodes (a local folder, and `ship` in effect)."""
    mode = config.model_files
    if mode == "auto":
        mode = "ship" if config.address else "shared"
    return mode == "ship" and Path(model.name).is_dir()


def pack_folder(folder: Path) -> tuple[str, bytes]:
    """(content key, tar bytes) of a model folder; the key names the node's unpacked copy."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(folder)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    data = buf.getvalue()
    return f"{folder.name}-{hashlib.sha256(data).hexdigest()[:16]}", data


def node_cache() -> Path:
    return Path(os.environ.get(NODE_CACHE_ENV) or Path(tempfile.gettempdir()) / "pov-node-models")


def unpack_folder(key: str, data: bytes) -> Path:
    """The node's copy of a shipped folder, unpacked once (a finished copy appears by an atomic rename)."""
    dest = node_cache() / key
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python without extraction filters: the archive is the driver's own, of plain files
                tar.extractall(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # another actor of this node got there first otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
