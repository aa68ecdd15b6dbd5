"""The machine a run happens on: the code's git state, package versions and GPUs, read without importing
torch or the other heavy libraries (versions from package metadata, GPU names from the NVIDIA driver)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

TAGGED_PACKAGES = (
    "python",
    "torch",
    "transformers",
    "unsloth",
    "chromadb",
    "mlflow",
    "sentence-transformers",
)
"""Recorded in the manifest and tagged on each execution as `version.<pkg>`."""
OTHER_PACKAGES = (
    "pov-runner",
    "numpy",
    "tokenizers",
    "huggingface-hub",
    "bitsandbytes",
    "cohere",
    "ray",
    "xllamacpp",
)
"""Also recorded in manifest.json (and compared), not tagged."""


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in (*TAGGED_PACKAGES[1:], *OTHER_PACKAGES):
        out[pkg] = _version(pkg)
    return out


def _version(pkg: str) -> str | None:
    try:
        dist = importlib.metadata.distribution(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None
    # An installed wheel's folder is named `<name>-<version>.dist-info`: reading the version there skips
    # parsing its METADATA (transformers' holds its whole README): tens of milliseconds per run in all.
    folder = getattr(getattr(dist, "_path", None), "name", "")
    if folder.endswith(".dist-info") and folder.count("-") == 1:
        return str(folder[: -len(".dist-info")].split("-")[1])
    return str(dist.version)


def _git(where: Path, *args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


_RUN_ID_GLOB = "[0-9a-f]" * 32
TOOL_FILES = (
    "**/.pov",
    "**/.pov/**",
    "**/mlflow.db",
    "**/mlflow.db-*",
    "**/*.db-wal",
    "**/*.db-shm",
    "**/*.db-journal",
    "**/*.db.lock",
    "**/mlruns/**",
    "**/mlartifacts/**",
    f"**/report/{_RUN_ID_GLOB}*/**",
)
"""What the runner, MLflow and `pov report` write into a project (git globs from the repository's top): its
state folder, sqlite stores with their WAL, shared-memory, journal and lock files, MLflow's artifact folders, and
report folders named by run id (`report/<id>/`, `report/<id>-vs-<id>/`; a `report/` folder of the user's own
still counts). A run must not see its own traces as uncommitted changes: the store's WAL file alone changed
between two runs and was reported as a drift."""
_PATHSPEC = (":(top)", *(f":(top,exclude,glob){p}" for p in TOOL_FILES))


def git_info(where: Path) -> dict[str, Any]:
    """Commit, branch and dirty flag of the repository holding the spec; all None outside a repository.

    `diff_hash` hashes the uncommitted changes (and untracked file names), so two dirty runs on the same
    commit with different edits still show as a drift. The diff itself is never stored: it may hold secrets.
    The tool's own files (TOOL_FILES) are left out by git itself, through pathspec excludes, whether or not
    the project's .gitignore names them.
    """
    commit = _git(where, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None, "diff_hash": None}
    branch = (_git(where, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    pathspec = (*_PATHSPEC, *(f":(top,exclude,literal){s}" for s in _mlflow_stores(where)))
    status = _git(where, "status", "--porcelain", "--", *pathspec) or ""
    dirty = bool(status.strip())
    diff_hash = None
    if dirty:
        diff = _git(where, "diff", "HEAD", "--binary", "--", *pathspec) or ""
        diff_hash = hashlib.sha256((status + "\0" + diff).encode()).hexdigest()[:16]
    return {"commit": commit.strip(), "branch": branch, "dirty": dirty, "diff_hash": diff_hash}


def _mlflow_stores(where: Path) -> list[str]:
    """The changed or untracked `*.db` files that are MLflow sqlite stores (a spec's `tracking.uri:
    sqlite:///runs.db`, say; mlflow.db is in TOOL_FILES already), as paths from the repository's top."""
    status = _git(
        where, "status", "--porcelain", "--untracked-files=all", "--", ":(top,glob)**/*.db", *_PATHSPEC[1:]
    )
    status = status or ""
    candidates = [
        line[3:].strip().strip('"') for line in status.splitlines() if line.rstrip().endswith(".db")
    ]
    if not candidates:
        return []
    top = (_git(where, "rev-parse", "--show-toplevel") or "").strip()
    return [rel for rel in candidates if top and _is_mlflow_store(Path(top) / rel)]


def _is_mlflow_store(path: Path) -> bool:
    import sqlite3

    try:
        with path.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return False
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            tables = {row[0] for row in con.execute("select name from sqlite_master where type='table'")}
        finally:
            con.close()
    except (OSError, sqlite3.Error):
        return False
    return {"experiments", "runs", "alembic_version"} <= tables


def _driver_gpu_names(root: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """GPU names from the Linux driver's files, in PCI bus order (nvidia-smi's order), without starting
    a process: nvidia-smi costs 30 ms or more per run."""
    names = []
    try:
        folders = sorted(root.iterdir())
    except OSError:
        return []
    for folder in folders:
        try:
            text = (folder / "information").read_text(errors="replace")
        except OSError:
            return []  # a partial list would misnumber CUDA_VISIBLE_DEVICES: ask nvidia-smi instead
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model:")), "")
        if not model:
            return []
        names.append(model)
    return names


def gpu_info() -> dict[str, Any]:
    """Names of the GPUs this process can see (CUDA_VISIBLE_DEVICES applied), from the NVIDIA driver's
    files or nvidia-smi.

    Not torch.cuda: initialising CUDA in the runner's parent process would hold GPU memory that the
    generation workers need.
    """
    names = _driver_gpu_names()
    if not names and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout
            names = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            names = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and names:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        if all(v.isdigit() for v in wanted):
            names = [names[int(v)] for v in wanted if int(v) < len(names)]
        elif not wanted or wanted == ["-1"]:
            names = []
    if not names and "torch" in sys.modules:
        torch = sys.modules["torch"]
        try:  # only when this process already initialised CUDA (no side effects then)
            if torch.cuda.is_initialized():
                names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:
            names = []
    unique = sorted(set(names))
    name = "none" if not names else (unique[0] if len(unique) == 1 else " + ".join(unique))
    return {"name": name, "count": len(names), "names": names}
