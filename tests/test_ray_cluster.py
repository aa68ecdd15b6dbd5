"""`pov run --executor ray --address ...` against a real multi-node Ray cluster on this machine: a head and two
worker nodes, each its own `ray start` (tests/ray_cluster.py), one cluster for the whole module.

The worker nodes run in a mount namespace of their own where the driver's project (spec, model cache, MLflow)
and this checkout's `runner` package are empty folders: code and model files reach them only the way they
would reach another host (runtime_env, the object store). Every test counts cells in MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from ray_cluster import LocalCluster, Node

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
POV = str(Path(sys.executable).parent / "pov")
SPEC = """\
name: {name}
extends: {repo}/experiments/tiny.yaml
generation: {{max_new_tokens: {tokens}, min_new_tokens: {tokens}, temperature: 0.0, seed: 0, batch_size: {batch}}}
matrix:
  question: {questions}
tracking: {{experiment: {name}}}
"""
SIX_QUESTIONS = "[japan-alliances, brics-growth-drivers, local-currency-settlement, g7-response, brics-common-currency, global-south-institutions]"
WORKERS = {"pov_worker": 1.0}
"""The worker nodes' shared custom resource: a spec that asks for it puts its actors on them only."""


def _installed_runner() -> Path:
    """Where `import runner` leads without this process's PYTHONPATH (the venv's editable install)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import runner; print(runner.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd="/",
    )
    return Path(out.stdout.strip()).parent if out.returncode == 0 else REPO / "runner"


@pytest.fixture(scope="module")
def driver_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Everything of the driver's own: projects, model caches, MLflow stores (hidden from worker nodes)."""
    return tmp_path_factory.mktemp("ray-driver")


@pytest.fixture(scope="module")
def cluster(driver_root: Path) -> Iterator[LocalCluster]:
    import tempfile

    hide = sorted({driver_root, REPO / "runner", _installed_runner()})
    root = Path(tempfile.mkdtemp(prefix="povray-"))  # short: Ray's socket paths have a length limit
    made = LocalCluster(
        root,
        [
            Node("w1", "127.0.0.2", cpus=1, gpus=1, extra=WORKERS, hide=hide),
            Node("w2", "127.0.0.3", cpus=1, gpus=1, extra=WORKERS, hide=hide),
        ],
        head_gpus=1,
    )
    try:
        made.start()
        yield made
    finally:
        left = made.stop()
        logs = {n.name: made.log(n)[-1500:] for n in made.nodes}
        made.cleanup_files()
        assert not left, f"Ray processes left behind: {left}"
        assert not made.stray(), "a process still names the cluster's folders"
        del logs


@pytest.fixture(scope="module")
def project(driver_root: Path, cluster: LocalCluster) -> Path:
    """A copy of the BRICS project, ingested once (the tiny model is built on first use)."""
    from conftest import copy_brics_project

    proj = copy_brics_project(driver_root / "proj")
    (proj / "ingest.yaml").write_text(_spec("ingest"))
    done = subprocess.run(
        [POV, "ingest", "ingest.yaml"],
        cwd=proj,
        env=_env(cluster, proj, "ingest"),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return proj


def _spec(
    name: str,
    tokens: int = 8,
    batch: int = 4,
    questions: str = "[japan-alliances, brics-growth-drivers, local-currency-settlement]",
) -> str:
    return SPEC.format(name=name, repo=REPO, tokens=tokens, batch=batch, questions=questions)


def _env(cluster: LocalCluster, proj: Path, name: str) -> dict[str, str]:
    env = cluster.env()
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{proj}/{name}.db",
        POV_MODEL_CACHE=str(proj / ".pov" / "models"),
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _pov(cluster: LocalCluster, proj: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    log = (proj / f"{name}.log").open("ab")
    return subprocess.Popen(
        [POV, *args],
        cwd=proj,
        env=_env(cluster, proj, name),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _on_workers(cluster: LocalCluster) -> list[str]:
    """`pov run` arguments: join the cluster, and place the actors on the two worker nodes only."""
    return ["--address", cluster.address, "--set", f"executor.resources={json.dumps(WORKERS)}"]


def _run(cluster: LocalCluster, proj: Path, name: str, *args: str, timeout: float = 300) -> tuple[int, str]:
    proc = _pov(cluster, proj, name, "run", f"{name}.yaml", "--quiet", "--executor", "ray", *args)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        _reap(proc)
    return code, (proj / f"{name}.log").read_text()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _cells(proj: Path, name: str) -> dict[str, list[dict[str, Any]]]:
    """Per cell id, every child run MLflow holds for it (live ones): status, cause, and its batch's node."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    db = proj / f"{name}.db"
    if not db.exists():
        return {}
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for run in client.search_runs([experiment.experiment_id], "", ViewType.ACTIVE_ONLY, 50_000):
        tags = run.data.tags
        if tags.get("pov.kind") != "cell":
            continue
        batch_file = Path(run.info.artifact_uri.removeprefix("file://")) / "batch.json"
        batch = json.loads(batch_file.read_text())["batch"] if batch_file.exists() else {}
        out.setdefault(tags["pov.cell_id"], []).append(
            {
                "status": tags.get("pov.status"),
                "cause": tags.get("pov.cause"),
                "node": batch.get("node"),
                "attempts": run.data.metrics.get("attempts"),
                "state": run.info.status,
            }
        )
    return out


def _expected(proj: Path, name: str) -> set[str]:
    from runner.spec import expand, load_spec

    return {c.id for c in expand(load_spec(proj / f"{name}.yaml"))}


def _write(proj: Path, name: str, **kw: Any) -> None:
    (proj / f"{name}.yaml").write_text(_spec(name, **kw))


def test_run_on_the_cluster_ships_code_and_model_to_nodes_that_cannot_see_the_driver(
    cluster: LocalCluster, project: Path
) -> None:
    name = "ship"
    _write(project, name)
    code, log = _run(
        cluster,
        project,
        name,
        *_on_workers(cluster),
    )
    assert code == 0, log[-3000:]
    cells = _cells(project, name)
    assert set(cells) == _expected(project, name) and len(cells) == 18
    assert all(len(runs) == 1 and runs[0]["status"] == "finished" for runs in cells.values()), cells
    # The group was shared out over both worker nodes (not the head: the spec asked for `pov_worker`).
    assert {r[0]["node"] for r in cells.values()} == {"127.0.0.2", "127.0.0.3"}
    # Each node loaded the tiny model from its own unpacked copy, not from the driver's (hidden) folder.
    for node in cluster.workers:
        copies = [p for p in cluster.cache(node).glob("tiny-llama-*") if (p / "config.json").is_file()]
        assert len(copies) == 1, (node.name, list(cluster.cache(node).iterdir()))


def test_shared_model_files_cannot_load_where_the_driver_path_is_not(
    cluster: LocalCluster, project: Path
) -> None:
    """The control for the test above: the same run told the driver's path is shared fails on those nodes."""
    name = "shared"
    _write(project, name, questions="[japan-alliances]")
    code, log = _run(
        cluster,
        project,
        name,
        *_on_workers(cluster),
        "--set",
        "executor.model_files=shared",
        "--set",
        "executor.split_groups=false",
    )
    assert code == 1, log[-3000:]  # every cell crashed the same way
    cells = _cells(project, name)
    assert len(cells) == 6 and all(r[0]["status"] == "crashed" for r in cells.values())
    assert "model failed to load" in log or "every cell crashed" in log, log[-2000:]


def _answered(proj: Path, name: str) -> list[dict[str, Any]]:
    """The rows of the run folder's results.jsonl so far (read, not MLflow: polling the sqlite store while
    the run creates it would race its creation)."""
    rows = []
    for path in (proj / ".pov" / "runs" / name).glob("*/results.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return rows


def _start_and_wait(
    cluster: LocalCluster, proj: Path, name: str, n: int, *args: str, node: str | None = None
) -> subprocess.Popen[bytes]:
    """`pov run` started in the background, returned once `n` cells are recorded (answered by `node`)."""
    proc = _pov(cluster, proj, name, "run", f"{name}.yaml", "--quiet", "--executor", "ray", *args)
    deadline = time.monotonic() + 240
    while sum(1 for r in _answered(proj, name) if node in (None, (r.get("batch") or {}).get("node"))) < n:
        assert proc.poll() is None, (proj / f"{name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no cell recorded in time"
        time.sleep(0.2)
    return proc


def _exactly_once(proj: Path, name: str) -> dict[str, dict[str, Any]]:
    cells = _cells(proj, name)
    assert set(cells) == _expected(proj, name)
    assert all(len(runs) == 1 for runs in cells.values()), {k: v for k, v in cells.items() if len(v) != 1}
    return {cid: runs[0] for cid, runs in cells.items()}


@pytest.mark.parametrize("how", ["raylet", "host"])
def test_a_node_lost_mid_run_loses_and_duplicates_nothing(
    cluster: LocalCluster, project: Path, how: str
) -> None:
    """SIGKILL of a worker node's raylet, or of every process of the node (a host lost), while its actor
    generates. `raylet`: the batch in flight is run again on the surviving node (executor.node_retries, default
    3). `host`: with node_retries 0, its cells are recorded crashed with cause `node_lost`. Either way every
    cell is recorded exactly once and the run finishes."""
    name = f"lost-{how}"
    # 36 cells, a second or more per batch of 2: the victim has batches left, and one in flight, when killed.
    _write(project, name, tokens=160, batch=2, questions=SIX_QUESTIONS)
    victim = cluster.workers[0] if how == "raylet" else cluster.workers[1]
    retries = ["--set", "executor.node_retries=0"] if how == "host" else []
    started = time.monotonic()
    proc = _start_and_wait(
        cluster,
        project,
        name,
        1,
        *_on_workers(cluster),
        *retries,
        node=victim.ip,
    )
    try:
        cluster.kill_node(victim, raylet_only=how == "raylet")
        code = proc.wait(timeout=300)
    finally:
        _reap(proc)
    wall = time.monotonic() - started
    log = (project / f"{name}.log").read_text()
    try:
        assert code == 0, log[-3000:]
        cells = _exactly_once(project, name)
        nodes = {r["node"] for r in cells.values() if r["status"] == "finished"}
        assert victim.ip in nodes  # it did answer before it was lost
        if how == "raylet":
            assert all(r["status"] == "finished" for r in cells.values()), cells
            assert max(r["attempts"] or 0 for r in cells.values()) >= 2  # the lost batch, run again
        else:
            lost = [r for r in cells.values() if r["status"] == "crashed"]
            assert lost and all(r["cause"] == "node_lost" for r in lost), cells
            assert len(lost) <= 2  # only the batch that was in flight on the lost node
        print(
            f"\n{how} lost: wall {wall:.1f} s; cells run again or lost: "
            f"{sum((r['attempts'] or 0) >= 2 or r['status'] == 'crashed' for r in cells.values())}"
        )
    finally:
        cluster.restart(victim)


def test_driver_killed_mid_run_then_run_again_resumes(cluster: LocalCluster, project: Path) -> None:
    name = "driver-kill"
    _write(project, name, tokens=32, batch=2)
    total = dict(cluster.available())
    proc = _start_and_wait(cluster, project, name, 3, "--address", cluster.address)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _reap(proc)
    # The dead driver's actors are ended by the cluster: every GPU is free again.
    deadline = time.monotonic() + 60
    while cluster.available().get("GPU", 0.0) < total["GPU"]:
        assert time.monotonic() < deadline, (
            f"actors of the killed driver still hold GPUs: {cluster.available()}"
        )
        time.sleep(1)
    before = len(_cells(project, name))
    code, log = _run(cluster, project, name, "--address", cluster.address)
    assert code == 0, log[-3000:]
    cells = _exactly_once(project, name)
    assert all(r["status"] == "finished" for r in cells.values())
    # Three cells were in the results file at the kill; the file is written before the tracker, so the last
    # batch (two cells) may be in the file only, and the run resumed from the tracker runs it again.
    assert 3 - 2 <= before < len(cells)
    assert "already done" in log


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "executor.num_gpus=2",
            "executor.num_gpus = 2 GPUs per actor, but the largest node of the cluster offers 1",
        ),
        (
            'executor.resources={"a100": 1}',
            "executor.resources asks for 1 'a100' per actor, but no node offers it",
        ),
    ],
)
def test_an_actor_no_node_can_hold_fails_before_any_model_loads(
    cluster: LocalCluster, project: Path, setting: str, message: str
) -> None:
    name = "too-big"
    _write(project, name, questions="[japan-alliances]")
    before = {n.name: sorted(p.name for p in cluster.cache(n).glob("*")) for n in cluster.workers}
    started = time.monotonic()
    code, log = _run(cluster, project, name, "--address", cluster.address, "--set", setting, timeout=120)
    assert code == 2, log[-3000:]
    assert message in log and "Traceback" not in log, log[-2000:]
    assert time.monotonic() - started < 60
    assert _cells(project, name) == {}  # no execution, no cell
    assert {n.name: sorted(p.name for p in cluster.cache(n).glob("*")) for n in cluster.workers} == before


def test_an_unreachable_address_fails_within_30_s_and_writes_nothing(tmp_path: Path) -> None:
    from conftest import copy_brics_project, free_port

    proj = copy_brics_project(tmp_path / "proj")
    (proj / "gone.yaml").write_text(_spec("gone", questions="[japan-alliances]"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{proj}/gone.db"
    for address in (f"127.0.0.1:{free_port()}", f"ray://10.255.255.1:{free_port()}"):
        started = time.monotonic()
        done = subprocess.run(
            [POV, "run", "gone.yaml", "--executor", "ray", "--address", address],
            cwd=proj,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
        assert done.returncode == 1, done.stderr[-2000:]
        assert (
            f"the Ray cluster at {address} does not answer" in done.stderr and "Traceback" not in done.stderr
        )
        assert took < 30, took
    assert not (proj / "gone.db").exists() and not (proj / "mlruns").exists()
