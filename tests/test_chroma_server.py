"""`corpus.chroma_url`: ingest and retrieve through a real `chroma run` server, same rankings as embedded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, wait_until_answers

from runner.errors import UserError
from runner.retrieval import ChromaRetriever, Store, ingest
from runner.spec import load_spec


def chroma_cli() -> str:
    found = Path(sys.executable).with_name("chroma")
    return str(found) if found.exists() else (shutil.which("chroma") or "chroma")


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "chroma.log").open("w")
    proc = subprocess.Popen(
        [
            chroma_cli(),
            "run",
            "--path",
            str(tmp_path / "server-data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(proc, f"{url}/api/v2/heartbeat", tmp_path / "chroma.log", "chroma run", 60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_http_store_gives_the_same_rankings_as_embedded(brics_project: Path, chroma_server: str) -> None:
    spec = brics_project / "experiments" / "base.yaml"
    embedded = load_spec(spec)
    remote = load_spec(spec, [f"corpus.chroma_url={chroma_server}"])
    r_embedded = ingest(embedded)
    r_remote = ingest(remote)
    assert r_remote.location == chroma_server and r_remote.chunks == r_embedded.chunks
    assert ingest(remote).chunks["added"] == 0  # idempotent over HTTP too

    keys = [(q, p, (15, 10, 5)) for q in embedded.questions for p in ("security", "markets")]
    local = ChromaRetriever(embedded).retrieve(keys)
    retriever = ChromaRetriever(remote)
    over_http = retriever.retrieve(keys)
    assert not retriever.warnings
    for key in keys:
        for a, b in zip(local[key].stages, over_http[key].stages, strict=True):
            assert a.ids == b.ids and a.texts == b.texts
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    meta = Store(remote).metadata()
    assert (meta["pov.model"], meta["pov.dim"], meta["pov.state"]) == ("all-MiniLM-L6-v2", 384, "complete")


def test_unreachable_server_is_a_user_error(brics_project: Path) -> None:
    exp = load_spec(
        brics_project / "experiments" / "base.yaml", [f"corpus.chroma_url=http://127.0.0.1:{free_port()}"]
    )
    with pytest.raises(UserError, match=r"cannot reach the Chroma server at http://127\.0\.0\.1"):
        ingest(exp)
