"""The files runs stored, read back as text many runs at a time: `pov view` reads every cell's prompt,
context, answer and stderr, and its execution's stored spec and templates.

A store whose artifacts are on this machine (the default: a sqlite store with its artifacts in a folder
beside it) is read in place, a file at a time; any other (a tracking server's proxied artifacts, object
storage) is downloaded a run at a time, several runs at once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from runner.tracking.schema import Artifacts

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DOWNLOADS = 8
"""Runs downloaded at once from a store that is not local (each download is a few small requests)."""


def local_folder(artifact_uri: str) -> Path | None:
    """The folder of a run's artifacts when it is on this machine (a `file:` URI or a plain path)."""
    parts = urlsplit(artifact_uri)
    if parts.scheme not in ("", "file") or (parts.scheme == "file" and parts.netloc not in ("", "localhost")):
        return None
    return Path(unquote(parts.path))


def _read(folder: Path, names: Iterable[str]) -> dict[str, str]:
    out = {}
    for name in names:
        path = folder / name
        if path.is_file():
            out[name] = path.read_text(encoding="utf-8", errors="replace")
    return out


def read_run_files(
    client: MlflowClient, runs: Sequence[tuple[str, str]], names: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Per run id (of `runs`, pairs of run id and artifact URI), the text of each file of `names` it
    stored; a file a run lacks (a crash has no answer) is left out."""
    out: dict[str, dict[str, str]] = {}
    remote = []
    for run_id, uri in runs:
        folder = local_folder(uri) if uri else None
        if folder is not None and folder.is_dir():
            out[run_id] = _read(folder, names)
        else:
            remote.append(run_id)
    if not remote:
        return out

    def fetch(run_id: str) -> tuple[str, dict[str, str]]:
        with tempfile.TemporaryDirectory(prefix="pov-view-") as tmp:
            stored = {f.path for f in client.list_artifacts(run_id)}
            for name in names:
                if name in stored:
                    client.download_artifacts(run_id, name, tmp)
            return run_id, _read(Path(tmp), names)

    with ThreadPoolExecutor(DOWNLOADS) as pool:
        out.update(pool.map(fetch, remote))
    return out


def read_execution_files(client: MlflowClient, run_id: str) -> dict[str, str]:
    """An execution's stored spec.yaml and templates/<name>.j2 (what it was run with), by artifact path;
    empty when it stored none (killed while starting)."""
    with tempfile.TemporaryDirectory(prefix="pov-view-") as tmp:
        stored = {f.path for f in client.list_artifacts(run_id)}
        for name in (Artifacts.SPEC, Artifacts.TEMPLATES):
            if name in stored:
                client.download_artifacts(run_id, name, tmp)
        root = Path(tmp)
        return {
            p.relative_to(root).as_posix(): p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
