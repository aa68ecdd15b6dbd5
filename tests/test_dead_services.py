"""Services that are down, or die mid-run: MLflow, Chroma and Cohere fail fast with one clear message.

Real services throughout: `mlflow server` and `chroma run` processes on 127.0.0.1 (killed with SIGKILL
where the test says so), the real `cohere` SDK against a closed port. The calls that hung for minutes
before the fix run in a subprocess with a timeout, so that the test stays bounded whatever the code does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, wait_until_answers

from runner.errors import RunAborted, UserError
from runner.run import CellResult
from runner.spec import Cell, Experiment, expand, load_spec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
QUICKSTART = ROOT / "experiments" / "tiny.yaml"
MANIFEST = {"git": {"commit": "c0ffee", "branch": "main", "dirty": False}, "corpus": {"fingerprint": "f"}}
CELLS = 6


def _env() -> dict[str, str]:
    """This environment without MLflow settings (the runner's own bounds are under test), tests/ importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=path, PYTHONUNBUFFERED="1")
    return env


def _python(code: str, cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"no answer within {timeout_s:.0f} s; output so far:\n{e.stdout}\n{e.stderr}")


def result(cell: Cell, n: int) -> CellResult:
    stages = [
        {
            "name": s,
            "ids": [f"{cell.question}-{i}" for i in range(k)],
            "texts": ["t"] * k,
            "scores": [0.5] * k,
        }
        for s, k in zip(("vector", "query", "pov"), cell.k, strict=True)
    ]
    return CellResult(
        cell=cell,
        status="finished",
        prompt=f"prompt {cell.id}",
        context={"question": cell.question, "stages": stages},
        output=f"answer {n}",
        metrics={"latency_s": 1.0 + n},
        started_at=1_700_000_000.0 + n,
        ended_at=1_700_000_001.0 + n,
    )


# ---- MLflow ---------------------------------------------------------------------------------------------------


def _start_only(uri: str) -> None:
    """What `pov run` does with the store before the first cell, and how the CLI reports a UserError."""
    from runner.tracking import MlflowTracker

    exp = load_spec(QUICKSTART)
    try:
        MlflowTracker(uri, "dead-services").start(exp, expand(exp)[:CELLS], MANIFEST)
    except UserError as e:
        sys.stderr.write(f"{e}\n")
        sys.exit(2)


def test_mlflow_at_a_closed_port_is_a_clear_user_error_within_seconds(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = _python(f"import test_dead_services as t; t._start_only({url!r})", tmp_path, 90)
    assert done.returncode == 2, done.stderr
    assert f"cannot reach the MLflow tracking server at {url} (connection refused)" in done.stderr
    assert "MLFLOW_TRACKING_URI" in done.stderr and "--no-track" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def test_mlflow_server_that_never_answers_is_a_clear_user_error(tmp_path: Path, silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}"
    done = _python(f"import test_dead_services as t; t._start_only({url!r})", tmp_path, 90)
    assert done.returncode == 2, done.stderr
    assert f"cannot reach the MLflow tracking server at {url} (no answer within" in done.stderr
    assert "Traceback" not in done.stderr


class MlflowServer:
    """A `mlflow server` on a fixed port and store, that can be killed and started again."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.tmp / "server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "mlflow", "server"),
                    *("--backend-store-uri", f"sqlite:///{self.tmp / 'db.sqlite'}"),
                    *("--artifacts-destination", str(self.tmp / "art")),
                    *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its uvicorn and job runner children die with its group
                cwd=self.tmp,
                env=_env(),
            )
        wait_until_answers(self.proc, f"{self.url}/health", log, "mlflow server", 120)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _log_then_lose_the_server(url: str, server_pgid: int, out: str) -> None:
    """Open an execution, record two cells, SIGKILL the server, try the next cell and then `finish` (as the
    engine's `finally` does); report what each step raised."""
    from runner.tracking import MlflowTracker

    exp = load_spec(QUICKSTART)
    cells = expand(exp)[:CELLS]
    t = MlflowTracker(url, "dead-services")
    t.start(exp, cells, MANIFEST)
    t.log([result(cells[0], 0), result(cells[1], 1)])
    os.killpg(server_pgid, signal.SIGKILL)
    got: dict[str, Any] = {"run_id": t.run_id}
    try:
        t.log([result(cells[2], 2)])
    except RunAborted as e:
        got["log"] = str(e)
    try:
        t.finish({"state": "interrupted"})
        got["finish"] = None
    except RunAborted as e:
        got["finish"] = str(e)
    Path(out).write_text(json.dumps(got))


def test_mlflow_killed_mid_run_aborts_clearly_and_the_next_run_resumes(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from runner.tracking import MlflowTracker

    assert mlflow_server.proc is not None
    out = tmp_path / "phase1.json"
    code = (
        "import test_dead_services as t; "
        f"t._log_then_lose_the_server({mlflow_server.url!r}, {mlflow_server.proc.pid}, {str(out)!r})"
    )
    done = _python(code, tmp_path, 120)
    assert done.returncode == 0, done.stderr
    got = json.loads(out.read_text())
    exp = load_spec(QUICKSTART)
    results = exp.state_dir / "runs" / exp.spec.name / got["run_id"] / "results.jsonl"
    assert got.get("log", "").startswith(
        f"MLflow at {mlflow_server.url} stopped answering after 2 of {CELLS} cells were recorded there"
    ), got
    assert f"every cell is also in {results}" in got["log"] and "run the same command to resume" in got["log"]
    assert got["finish"] in (None, got["log"])  # the engine's `finally` must not hide the message

    mlflow_server.kill()  # reaped (the subprocess killed it)
    mlflow_server.start()
    cells = expand(exp)[:CELLS]
    t = MlflowTracker(mlflow_server.url, "dead-services")
    skip = t.start(exp, cells, MANIFEST)
    assert t.run_id == got["run_id"] and skip == {cells[0].id, cells[1].id}
    t.log([result(c, i) for i, c in enumerate(cells) if c.id not in skip])
    t.finish({"state": "finished"})
    client = MlflowClient(mlflow_server.url)
    live = client.search_runs(
        [t.experiment_id], f"tags.`mlflow.parentRunId` = '{t.run_id}'", ViewType.ACTIVE_ONLY
    )
    assert sorted(r.data.tags["pov.cell_id"] for r in live) == sorted(c.id for c in cells)
    assert client.get_run(t.run_id).data.tags["pov.state"] == "finished"


# ---- Chroma ---------------------------------------------------------------------------------------------------


class ChromaServer:
    def __init__(self, tmp: Path) -> None:
        from test_chroma_server import chroma_cli

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp / "chroma.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    chroma_cli(),
                    "run",
                    "--path",
                    str(tmp / "chroma-data"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until_answers(self.proc, f"{self.url}/api/v2/heartbeat", self.log, "chroma run", 60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def _small_corpus_spec(project: Path, url: str) -> Experiment:
    # Two files keep the embedding short; the server is what is under test.
    return load_spec(
        project / "experiments" / "base.yaml",
        [f"corpus.chroma_url={url}", "corpus.include=[01_*.md, 02_*.md]", "corpus.collection=dead-chroma"],
    )


def test_chroma_server_that_never_answers_is_a_clear_user_error(
    brics_project: Path, tmp_path: Path, silent_port: int
) -> None:
    """Chroma's own client has no timeout: it waited for ever."""
    spec = brics_project / "experiments" / "base.yaml"
    url = f"http://127.0.0.1:{silent_port}"
    code = f"from runner.cli import main; raise SystemExit(main(['ingest', {str(spec)!r}, '--set', 'corpus.chroma_url={url}']))"
    done = _python(code, tmp_path, 90)
    assert done.returncode == 2, done.stderr
    assert f"cannot reach the Chroma server at {url} (ReadTimeout" in done.stderr
    assert "Traceback" not in done.stderr


class KillingEmbedder:
    """The spec's real embedder, killing the Chroma server once the chunks are embedded: ingest has read
    the collection by then and is about to write."""

    def __init__(self, exp: Experiment, server: ChromaServer) -> None:
        from runner.retrieval.embedders.base import build_embedder

        self.inner = build_embedder(exp.spec.embedder, exp.state_dir)
        self.server = server

    def embed(self, texts: list[str], kind: Any) -> np.ndarray:
        vectors = self.inner.embed(texts, kind)
        self.server.kill()
        return vectors

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()


def test_chroma_dying_mid_ingest_is_a_user_error(brics_project: Path, chroma: ChromaServer) -> None:
    from runner.retrieval import ingest

    exp = _small_corpus_spec(brics_project, chroma.url)
    with pytest.raises(UserError) as err:
        ingest(exp, embedder=KillingEmbedder(exp, chroma))
    message = str(err.value)
    assert message.startswith(f"Chroma at {chroma.url} is not answering: "), message
    assert "start `chroma run`" in message and "unset corpus.chroma_url" in message


def test_chroma_dying_before_a_query_aborts_the_run(brics_project: Path, chroma: ChromaServer) -> None:
    from runner.retrieval import ChromaRetriever, ingest

    exp = _small_corpus_spec(brics_project, chroma.url)
    ingest(exp)
    retriever = ChromaRetriever(exp)
    chroma.kill()
    with pytest.raises(RunAborted) as err:
        retriever.retrieve([("japan-alliances", "security", (5, 3, 2))])
    message = str(err.value)
    assert message.startswith(f"Chroma at {chroma.url} stopped answering"), message
    assert "run the same command" in message and "corpus.chroma_url" in message


# ---- Cohere ---------------------------------------------------------------------------------------------------


def test_cohere_at_a_closed_port_is_a_clear_user_error_after_few_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner.retrieval.embedders.cohere import CohereEmbedder
    from runner.spec import Embedder

    key = "co-test-0123456789abcdef"
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CO_API_KEY", key)
    monkeypatch.setenv("CO_API_URL", url)
    waits: list[float] = []
    emb = CohereEmbedder(Embedder(provider="cohere", model="embed-english-v3.0"), sleep=waits.append)
    with pytest.raises(UserError) as err:
        emb.embed(["a question"], "query")
    message = str(err.value)
    assert message.startswith(f"cannot reach the Cohere API at {url}: "), message
    assert "CO_API_URL" in message and "network" in message and key not in message
    assert emb.calls <= 3 and sum(waits) <= 5  # a dead address is not retried for a minute


def test_service_urls_in_these_messages_are_redacted(tmp_path: Path, brics_project: Path) -> None:
    """A URL may carry a password: none of the messages above may repeat it."""
    from runner.retrieval import ingest

    password = "s3cret-Passw0rd-42"
    port = free_port()
    done = _python(
        f"import test_dead_services as t; t._start_only('http://pov:{password}@127.0.0.1:{port}')",
        tmp_path,
        90,
    )
    assert done.returncode == 2 and "cannot reach the MLflow tracking server" in done.stderr, done.stderr
    assert password not in done.stderr
    exp = load_spec(
        brics_project / "experiments" / "base.yaml",
        [f"corpus.chroma_url=http://pov:{password}@127.0.0.1:{port}"],
    )
    with pytest.raises(UserError, match="cannot reach the Chroma server") as err:
        ingest(exp)
    assert password not in str(err.value)
