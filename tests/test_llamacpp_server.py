"""A real llama.cpp server (xllamacpp, started by the runner on 127.0.0.1) serving the real SmolLM2-135M-Instruct
GGUF: eight cells in flight at once, the same greedy answers twice, per-cell tokens and latency; the server
killed with SIGKILL mid-run (its cells recorded with the cause, the server restarted, and nothing lost or
duplicated on resume); and no server left behind when `pov run` itself is killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, RecordingTracker, StubRetriever

from runner.generation import builtin_gguf
from runner.run.engine import run_experiment
from runner.run.sinks import read_results
from runner.spec import expand, load_spec

pytestmark = pytest.mark.slow
pytest.importorskip("xllamacpp", reason="the llamacpp extra: pip install -e '.[llamacpp]'")
POV = str(Path(sys.executable).parent / "pov")
LISTENING = re.compile(r"pov llama.cpp server (\d+): listening on (\S+)")


@pytest.fixture(scope="module")
def gguf(smollm2: Path) -> Path:
    """The real SmolLM2 GGUF in the shared model cache (the `smollm2` fixture fetched it)."""
    path = builtin_gguf("smollm2-135m-instruct", REPO / ".pov")
    assert path is not None
    return path


def write_spec(
    tmp: Path, *, concurrency: int = 8, batch_size: int = 8, corpus: Path | None = None, extra: str = ""
) -> Path:
    """Eight short cells (4 questions x 2 personas) for the managed server; a prompt of a few dozen tokens."""
    (tmp / "ask.j2").write_text("{{ persona }} Answer in one sentence: {{ question }}\n")
    spec = tmp / "spec.yaml"
    spec.write_text(f"""\
name: llama-server
corpus: {{path: {corpus or REPO / "data" / "brics"}, collection: llama-server-test}}
questions:
  - {{id: q1, text: 'What is the capital of France?'}}
  - {{id: q2, text: 'Why do countries trade?'}}
  - {{id: q3, text: 'What does a central bank do?'}}
  - {{id: q4, text: 'What is inflation?'}}
pov_sets: {{plain: ['Trade is good.']}}
personas: {{brief: 'You are brief.', kind: 'You are kind.'}}
templates: {{ask: {tmp / "ask.j2"}}}
models:
  smol:
    backend: openai
    name: smollm2
    max_seq_length: 512
    max_concurrency: {concurrency}
    server: {{gguf: "builtin:smollm2-135m-instruct"}}
generation: {{max_new_tokens: 12, temperature: 0.0, seed: 0, batch_size: {batch_size}}}
limits: {{cell_timeout_s: 240}}
tracking: {{experiment: llama-server}}
{extra}""")
    return spec


def server_logs(tmp: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((tmp / ".pov").rglob("server0-*.log")))


def test_eight_concurrent_cells_answer_the_same_twice(tmp_path: Path, gguf: Path) -> None:
    exp = load_spec(write_spec(tmp_path))
    cells = expand(exp)
    assert len(cells) == 8
    runs = []
    for _ in range(2):
        tracker = RecordingTracker()
        summary = run_experiment(exp, cells, tracker, retriever=StubRetriever(), quiet=True)
        assert (summary.finished, summary.crashed) == (8, 0)
        runs.append(tracker.results)
    first, second = runs
    assert {c: r.output for c, r in first.items()} == {c: r.output for c, r in second.items()}
    assert all(r.output and r.output.strip() for r in first.values())
    assert len({r.output for r in first.values()}) > 1  # real answers to different questions
    for r in first.values():
        m = r.metrics
        assert m["prompt_tokens"] > 10  # the server's own count, chat template included
        assert 1 <= m["new_tokens"] <= 12
        assert 0 < m["latency_s"] <= m["batch_latency_s"] + 0.05 and m["latency_per_cell"] == 1.0
        assert m["tokens_per_s"] == pytest.approx(m["new_tokens"] / m["latency_s"])
        assert m["server_generate_ms"] > 0 and m["host_rss_mb"] > 50  # the server's timings and its peak RSS
    # Eight requests were open at one moment: the server batched them.
    assert max(r.started_at for r in first.values()) < min(r.ended_at for r in first.values())
    assert len(LISTENING.findall(server_logs(tmp_path))) == 2  # one server per run, each stopped after it


def _kill_server_once_it_generates(tmp: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = server_logs(tmp)
        found = LISTENING.search(text)
        if found and "processing task" in text:
            os.kill(int(found[1]), signal.SIGKILL)
            killed.append(int(found[1]))
            return
        time.sleep(0.05)


def test_a_server_killed_mid_run_is_restarted_and_resume_loses_nothing(tmp_path: Path, gguf: Path) -> None:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from runner.tracking import MlflowTracker

    exp = load_spec(write_spec(tmp_path, concurrency=4, batch_size=4))
    cells = expand(exp)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_server_once_it_generates, args=(tmp_path, killed), daemon=True)
    killer.start()
    first = run_experiment(
        exp, cells, MlflowTracker(uri, "llama-server"), retriever=StubRetriever(), quiet=True
    )
    killer.join(5)
    assert killed, server_logs(tmp_path)[-3000:]
    results = read_results(first.results_path)
    crashed = {c: r for c, r in results.items() if r["status"] == "crashed"}
    assert len(results) == 8 and 1 <= len(crashed) <= 4  # the requests in flight, no more
    for r in crashed.values():
        assert r["cause"] == "killed" and f"(pid {killed[0]}) died of SIGKILL" in r["error"]
    pids = [int(p) for p, _ in LISTENING.findall(server_logs(tmp_path))]
    assert len(pids) == 2 and pids[0] == killed[0] and pids[1] != pids[0]  # restarted for the other cells

    again = run_experiment(
        exp, cells, MlflowTracker(uri, "llama-server"), retriever=StubRetriever(), quiet=True
    )
    assert (again.cells_skipped, again.finished, again.crashed) == (8, 0, 0)  # resume: nothing to redo
    retry = run_experiment(
        exp,
        cells,
        MlflowTracker(uri, "llama-server"),
        retriever=StubRetriever(),
        quiet=True,
        retry_crashed=True,
    )
    assert (retry.finished, retry.crashed) == (len(crashed), 0)

    client = MlflowClient(uri)
    eid = client.get_experiment_by_name("llama-server").experiment_id
    kids = [
        r for r in client.search_runs([eid], "", ViewType.ALL, 1000) if r.data.tags.get("pov.kind") == "cell"
    ]
    live = [k for k in kids if k.info.lifecycle_stage == "active"]
    assert sorted(k.data.tags["pov.cell_id"] for k in live) == sorted(c.id for c in cells)  # once each
    assert all(k.data.tags["pov.status"] == "finished" for k in live)


def test_killing_pov_run_leaves_no_server(tmp_path: Path, gguf: Path) -> None:
    """`pov run` killed with SIGKILL while its server generates: the server dies with it."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Trade\n\nCountries trade because each makes some things more cheaply.\n")
    spec = write_spec(tmp_path, corpus=corpus)
    (tmp_path / "pyproject.toml").write_text("# test project root\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [POV, "run", str(spec), "--no-track", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        pid = None
        deadline = time.monotonic() + 300
        while pid is None and time.monotonic() < deadline and proc.poll() is None:
            text = server_logs(tmp_path)
            found = LISTENING.search(text)
            pid = int(found[1]) if found and "processing task" in text else None
            time.sleep(0.05)
        assert pid is not None, (tmp_path / "run.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        gone = time.monotonic() + 5
        while _running(pid) and time.monotonic() < gone:
            time.sleep(0.05)
        assert not _running(pid), f"llama.cpp server {pid} outlived its pov run"
    finally:
        if proc.poll() is None:
            proc.kill()


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a reaper (a container's init may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_fault_kills_the_managed_server_for_real(tmp_path: Path, gguf: Path) -> None:
    """`faults:` with backend openai signals the server itself while the cell's request runs: the cell is
    recorded with the cause its death gets (segfault), and the other cells go to a new server."""
    faults = (
        "faults:\n  - {cause: segfault, match: {question: q2, persona: kind}}\nmatrix: {question: [q1, q2]}\n"
    )
    exp = load_spec(write_spec(tmp_path, concurrency=1, batch_size=1, extra=faults))
    tracker = RecordingTracker()
    summary = run_experiment(exp, expand(exp), tracker, retriever=StubRetriever(), quiet=True)
    crashed = [r for r in tracker.results.values() if r.status == "crashed"]
    assert (summary.finished, summary.crashed) == (3, 1)
    assert crashed[0].cell.question == "q2" and crashed[0].cell.persona == "kind"
    assert crashed[0].cause == "segfault" and "died of SIGSEGV" in str(crashed[0].error)
    assert len(LISTENING.findall(server_logs(tmp_path))) == 2
