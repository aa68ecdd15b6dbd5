"""The tracker against a real `mlflow server` (sqlite backend, proxied artifacts) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until_answers

from runner.run import CellResult
from runner.spec import Cell, Experiment, expand, load_spec

pytestmark = pytest.mark.slow
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per download is noise
ROOT = Path(__file__).resolve().parent.parent
MANIFEST = {
    "git": {"commit": "c0ffee", "branch": "main", "dirty": True},
    "gpu": {"name": "Test GPU"},
    "versions": {"python": "3.11", "torch": "2.x"},
    "corpus": {"fingerprint": "abc123"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'db.sqlite'}",
            "--artifacts-destination",
            str(tmp / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(proc, f"{url}/health", tmp / "server.log", "mlflow server", 120)
        yield url
    finally:
        # The server starts uvicorn and a job runner as children; its session holds them all.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def exp() -> Experiment:
    return load_spec(ROOT / "experiments" / "tiny.yaml")


def _result(cell: Cell, n: int, crashed: bool = False) -> CellResult:
    stages = [
        {
            "name": s,
            "ids": [f"{cell.question}-{i}" for i in range(k)],
            "texts": [f"t{i}" for i in range(k)],
            "scores": [round(0.9 - i / 50 - n / 1000, 6) for i in range(k)],
        }
        for s, k in zip(("vector", "query", "pov"), cell.k, strict=True)
    ]
    return CellResult(
        cell=cell,
        status="crashed" if crashed else "finished",
        prompt=f"prompt {cell.id} ✓",
        context={"question": cell.question, "stages": stages},
        output=None if crashed else f"answer {n} ✓",
        cause="timeout" if crashed else None,
        error="TimeoutError: 120 s" if crashed else None,
        stderr_tail="last line of stderr" if crashed else None,
        metrics={
            "latency_s": 0.5 + n,
            "prompt_tokens": 90.0 + n,
            "new_tokens": 4.0,
            "tokens_per_s": 8.0,
            "gpu_peak_allocated_mb": 10.0 * n,
            "gpu_peak_reserved_mb": 12.0 * n,
            "host_rss_mb": 200.0,
        },
        tags={"check.degenerate": "fail"},
        started_at=1_700_000_000.0 + n,
        ended_at=1_700_000_001.0 + n,
    )


def test_logs_and_reads_back_every_field(server: str, exp: Experiment, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from runner.tracking import MlflowTracker

    cells = expand(exp)[:5]
    results = [_result(c, i, crashed=(i == 4)) for i, c in enumerate(cells)]
    t = MlflowTracker(server, "server-test")
    assert t.start(exp, cells, MANIFEST) == set()
    t.log(results[:2])
    t.log(results[2:])
    t.finish({"state": "finished"})

    c = MlflowClient(server)
    parent = c.get_run(t.run_id)
    assert parent.info.status == "FINISHED"
    want_tags = {
        "pov.kind": "execution",
        "pov.schema_version": "1",
        "pov.state": "finished",
        "pov.spec_hash": exp.spec_hash,
        "pov.spec_name": exp.spec.name,
        "git.commit": "c0ffee",
        "git.branch": "main",
        "git.dirty": "true",
        "gpu.name": "Test GPU",
        "corpus.fingerprint": "abc123",
        "version.torch": "2.x",
    }
    assert {k: parent.data.tags.get(k) for k in want_tags} == want_tags
    assert (
        parent.data.params["spec_name"] == exp.spec.name and parent.data.params["spec_hash"] == exp.spec_hash
    )
    for axis in ("model", "template", "persona", "pov_set", "question", "k"):
        assert f"axis.{axis}" in parent.data.params
    assert parent.data.metrics["cells_total"] == 5 and parent.data.metrics["cells_finished"] == 4
    assert parent.data.metrics["cells_crashed"] == 1 and parent.data.metrics["crashed.timeout"] == 1
    spec_dir = Path(c.download_artifacts(t.run_id, "", str(tmp_path / "parent")))
    assert json.loads((spec_dir / "manifest.json").read_text()) == MANIFEST
    assert "questions:" in (spec_dir / "spec.yaml").read_text()
    for name, info in exp.templates.items():
        assert (spec_dir / "templates" / f"{name}.j2").read_text() == info.text

    kids = {
        r.data.tags["pov.cell_id"]: r
        for r in c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{t.run_id}'")
    }
    assert set(kids) == {cell.id for cell in cells}
    for r in results:
        run = c.get_run(kids[r.cell.id].info.run_id)
        assert run.info.run_name == r.cell.id
        assert run.info.status == ("FAILED" if r.status == "crashed" else "FINISHED")
        assert run.info.start_time == int(r.started_at * 1000) and run.info.end_time == int(r.ended_at * 1000)
        assert run.data.params["cell_id"] == r.cell.id and run.data.params["k"] == r.cell.k_label
        assert run.data.params["persona"] == r.cell.persona and run.data.params["question"] == r.cell.question
        assert run.data.params["model_name"] == exp.spec.models[r.cell.model].name
        for key, value in r.metrics.items():
            assert run.data.metrics[key] == pytest.approx(value)
        assert run.data.metrics["stage1_top_score"] == pytest.approx(r.context["stages"][0]["scores"][0])
        assert run.data.tags["pov.status"] == r.status and run.data.tags["check.degenerate"] == "fail"
        assert run.data.tags.get("pov.cause") == r.cause
        files = Path(c.download_artifacts(run.info.run_id, "", str(tmp_path / r.cell.id)))
        assert (files / "prompt.txt").read_text() == r.prompt
        assert json.loads((files / "context.json").read_text()) == r.context
        if r.output is not None:
            assert (files / "output.md").read_text() == r.output
        else:
            assert not (files / "output.md").exists()
            assert "last line of stderr" in (files / "stderr.txt").read_text()


def test_resume_through_the_server(server: str, exp: Experiment) -> None:
    """The resume path (search, KILLED marking, soft delete) works over REST too."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from runner.tracking import MlflowTracker

    cells = expand(exp)[:4]
    t = MlflowTracker(server, "server-resume")
    t.start(exp, cells, MANIFEST)
    t.log([_result(cells[0], 0)])
    c = MlflowClient(server)
    orphan = c.create_run(
        t.experiment_id,
        tags={
            "mlflow.parentRunId": t.run_id,
            "pov.cell_id": cells[1].id,
            "pov.kind": "cell",
            "pov.status": "finished",
        },
    )  # left RUNNING
    t2 = MlflowTracker(server, "server-resume")
    assert t2.start(exp, cells, MANIFEST) == {cells[0].id} and t2.run_id == t.run_id
    t2.log([_result(cell, i) for i, cell in enumerate(cells[1:], 1)])
    t2.finish({})
    gone = c.get_run(orphan.info.run_id)
    assert gone.info.status == "KILLED" and gone.info.lifecycle_stage == "deleted"
    live = c.search_runs([t.experiment_id], f"tags.`mlflow.parentRunId` = '{t.run_id}'", ViewType.ACTIVE_ONLY)
    assert sorted(r.data.tags["pov.cell_id"] for r in live) == sorted(cell.id for cell in cells)
    assert c.get_run(t.run_id).data.tags["pov.state"] == "finished"


def test_traces_through_the_server(server: str) -> None:
    """Each cell's trace goes over REST too (trace info, then the spans through the server's OTLP endpoint),
    and reads back whole: span types, documents, cell id, the link to the child run."""
    from mlflow.tracking import MlflowClient
    from test_traces import cell_result, check_trace

    from runner.tracking import MlflowTracker, Tags

    exp = load_spec(ROOT / "experiments" / "tiny.yaml", ["matrix.k=[[6, 4, 2]]"])
    cells = expand(exp)[:2]
    results = [cell_result(c, i, crashed=(i == 1)) for i, c in enumerate(cells)]
    t = MlflowTracker(server, "server-traces")
    t.start(exp, cells, MANIFEST)
    t.log(results)
    t.finish({})
    c = MlflowClient(server)
    assert t.experiment_id is not None and t.run_id is not None
    kids = {
        r.data.tags[Tags.CELL_ID]: r.info.run_id
        for r in c.search_runs([t.experiment_id], f"tags.`mlflow.parentRunId` = '{t.run_id}'")
    }
    assert len(c.search_traces(locations=[t.experiment_id])) == 2
    for r in results:
        [linked] = c.search_traces(locations=[t.experiment_id], run_id=kids[r.cell.id])
        check_trace(c.get_trace(linked.info.trace_id), r, exp, kids[r.cell.id], t.run_id)
