"""run_experiment end to end on the CPU: the tiny model in real worker processes, a stand-in retriever
(runner.retrieval.retriever is tested on its own), real faults."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingTracker, StubRetriever, gen_spec

from runner.run.engine import run_experiment
from runner.run.prepare import fault_for
from runner.run.sinks import read_results
from runner.spec import Fault, expand, load_spec

FAULTS = {  # (question, persona, pov_set) -> cause: exactly 6 of the 30 cells, one of each cause
    ("q1", "a1", "p1"): "segfault",
    ("q2", "a2", "p2"): "abort",
    ("q3", "a1", "p3"): "killed",
    ("q4", "a2", "p1"): "exception",
    ("q5", "a1", "p2"): "timeout",
    ("q1", "a2", "p3"): "cuda_oom",
}


def _expected_revision(folder: Path) -> str:
    """The documented revision of a local model folder, computed here independently of the runner: sha256
    over each file's relative path and the sha256 of its bytes, in path order, cut to 16 hex digits."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        h.update(f"{f.relative_to(folder).as_posix()}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


def _faults_yaml() -> str:
    lines = ["faults:"]
    for (q, a, p), cause in FAULTS.items():
        lines.append(f"  - {{cause: {cause}, match: {{question: {q}, persona: {a}, pov_set: {p}}}}}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faults")
    exp = load_spec(
        gen_spec(
            tmp, tiny_model_dir, limits="{cell_timeout_s: 3, max_worker_restarts: 20}", extra=_faults_yaml()
        )
    )
    cells = expand(exp)
    tracker = RecordingTracker()
    summary = run_experiment(exp, cells, tracker, retriever=StubRetriever(), quiet=True)
    return {"exp": exp, "cells": cells, "tracker": tracker, "summary": summary}


@pytest.mark.slow
def test_real_faults_in_a_fifth_of_the_cells_crash_only_those_cells(fault_run: dict[str, Any]) -> None:
    cells, tracker, summary = fault_run["cells"], fault_run["tracker"], fault_run["summary"]
    assert len(cells) == 30
    results = tracker.results
    assert set(results) == {c.id for c in cells}, "every cell is recorded, none twice"
    assert sum(len(b) for b in tracker.logged) == 30
    for cell in cells:
        r = results[cell.id]
        expected = FAULTS.get((cell.question, cell.persona, cell.pov_set))
        if expected is None:
            assert r.status == "finished", (cell, r.cause, r.error)
            assert r.output is not None and r.metrics["new_tokens"] >= 1
            assert r.metrics["latency_s"] > 0 and r.metrics["prompt_tokens"] > 0
        else:
            assert (r.status, r.cause) == ("crashed", expected), (cell, r.error)
            assert r.output is None
            assert f"injected fault {expected!r} for cell {cell.id}" in (r.stderr_tail or ""), r.stderr_tail
    assert summary.finished == 24 and summary.crashed == 6
    assert summary.crashed_by_cause == {c: 1 for c in FAULTS.values()}
    assert tracker.finished is not None
    assert tracker.finished["cells_crashed"] == 6 and tracker.finished["crashed.timeout"] == 1
    assert tracker.finished["state"] == "finished"


@pytest.mark.slow
def test_prompts_hold_the_pov_stage_chunks_best_first(fault_run: dict[str, Any]) -> None:
    """The template's context is the last stage's chunks in rank order; what earlier stages kept and the POV
    stage dropped never reaches the model."""
    for r in fault_run["tracker"].results.values():
        vector, _, pov = r.context["stages"]
        assert [s["name"] for s in r.context["stages"]] == ["vector", "query", "pov"]
        positions = [r.prompt.index(text) for text in pov["texts"]]
        assert positions == sorted(positions), "best first"
        dropped = set(vector["texts"]) - set(pov["texts"])
        assert dropped and not [text for text in dropped if text in r.prompt]


@pytest.mark.slow
def test_the_results_file_matches_the_tracker(fault_run: dict[str, Any]) -> None:
    summary, tracker = fault_run["summary"], fault_run["tracker"]
    on_disk = read_results(summary.results_path)
    assert set(on_disk) == set(tracker.results)
    statuses = Counter(d["status"] for d in on_disk.values())
    assert statuses == {"finished": 24, "crashed": 6}
    assert {d["cause"] for d in on_disk.values() if d["cause"]} == set(FAULTS.values())
    assert summary.results_path == summary.run_dir / "results.jsonl"
    assert summary.run_dir == fault_run["exp"].state_dir / "runs" / "gen-test" / "rec-1"
    assert json.loads((summary.run_dir / "summary.json").read_text())["cells_crashed"] == 6
    assert list((summary.run_dir / "workers").glob("*.log")), "worker stderr files live in the run folder"


def test_prompts_context_metrics_and_skips(tmp_path: Path, tiny_model_dir: Path) -> None:
    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=3, personas=1, pov_sets=1))
    cells = expand(exp)
    skipped = cells[0].id
    tracker = RecordingTracker(skip={skipped})
    retriever = StubRetriever()
    summary = run_experiment(exp, cells, tracker, retriever=retriever, quiet=True)
    assert summary.cells_total == 3 and summary.cells_skipped == 1 and summary.finished == 2
    results = tracker.results
    assert skipped not in results
    assert retriever.calls == [sorted({(c.question, c.pov_set, c.k, c.pov_score) for c in cells[1:]})]
    expected_chunks = retriever.retrieve([(c.question, c.pov_set, c.k) for c in cells[1:]])
    for cell in cells[1:]:
        r = results[cell.id]
        stub = expected_chunks[(cell.question, cell.pov_set, cell.k)]
        assert r.prompt.startswith(exp.spec.personas[cell.persona])
        assert exp.questions[cell.question].text in r.prompt
        assert all(chunk["text"] in r.prompt for chunk in stub.final_chunks())
        assert r.prompt.rstrip().endswith("### RESPONSE:")
        assert r.context == stub.to_dict()
        for key in (
            "latency_s",
            "prompt_tokens",
            "new_tokens",
            "tokens_per_s",
            "gpu_peak_allocated_mb",
            "gpu_peak_reserved_mb",
            "host_rss_mb",
            "batch_size",
            "attempts",
            "stage1_top_score",
            "stage3_mean_score",
            "prompt_truncated",
        ):
            assert key in r.metrics, key
        assert r.metrics["new_tokens"] <= 4 and r.metrics["prompt_truncated"] == 0
        assert r.tags["model_name"] == str(tiny_model_dir)
        assert r.tags["model_revision"] == _expected_revision(tiny_model_dir)
        assert r.started_at <= r.ended_at
    assert len(read_results(summary.results_path)) == 2
    assert {"manifest", "models", "retrieval", "prompts", "generation"} <= set(summary.phases)
    assert summary.phases["generation"] <= summary.wall_time_s


def test_builtin_model_is_built_once_and_long_prompts_are_truncated(tmp_path: Path) -> None:
    path = gen_spec(tmp_path, Path("builtin:tiny-llama"), questions=2, personas=1, pov_sets=1)
    text = path.read_text().replace("max_seq_length: 512", "max_seq_length: 64")
    path.write_text(text)
    exp = load_spec(path)
    summary = run_experiment(exp, expand(exp), RecordingTracker(), retriever=StubRetriever(), quiet=True)
    assert summary.finished == 2
    built = list((exp.state_dir / "models").glob("tiny-llama-*"))
    assert len(built) == 1 and (built[0] / "config.json").exists()
    for r in read_results(summary.results_path).values():
        assert r["metrics"]["prompt_truncated"] == 1
        assert r["metrics"]["prompt_tokens"] == 64 - 4  # max_seq_length - max_new_tokens
        assert r["tags"]["model_name"] == "builtin:tiny-llama"
        assert r["tags"]["model_revision"] == _expected_revision(built[0])


def test_an_interrupted_run_stops_its_workers_and_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    import psutil

    class StopsAtFirstResult(RecordingTracker):
        def log(self, results: list[Any]) -> None:
            super().log(results)
            raise KeyboardInterrupt

    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=3, personas=2, pov_sets=2))
    tracker = StopsAtFirstResult()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, expand(exp), tracker, retriever=StubRetriever(), quiet=True)
    assert tracker.finished is not None and tracker.finished["state"] == "interrupted"
    assert 0 < tracker.finished["cells_run"] < 12
    left = {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    } - before
    assert not left, "worker processes outlived the run"


def test_pov_run_command_with_real_retrieval(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli

    spec = gen_spec(tmp_path, tiny_model_dir)
    code = cli.main(
        ["run", str(spec), "--no-track", "--limit", "3", "--quiet", "--set", "generation.max_new_tokens=2"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "gen-test: 3 cells: 3 finished, 0 crashed" in out
    results = Path(out.split("results: ")[1].split()[0])
    rows = read_results(results)
    assert len(rows) == 3 and all(r["metrics"]["new_tokens"] <= 2 for r in rows.values())


def test_pov_run_rejects_bad_arguments(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli

    spec = gen_spec(tmp_path, tiny_model_dir)
    for args in (["--gpus", "a,b"], ["--limit", "0"], ["--executor", "slurm"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["run", str(spec), *args])
        assert e.value.code == 2
    assert "--gpus" in capsys.readouterr().err


def test_faults_pick_cells_by_match_and_a_stable_rate(tmp_path: Path, tiny_model_dir: Path) -> None:
    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=10, personas=2, pov_sets=3))
    cells = expand(exp)
    everywhere = [Fault(cause="abort", rate=0.3)]
    picked = {c.id for c in cells if fault_for(everywhere, c)}
    # The documented rule, computed here: fault i picks a cell when sha256("<cell id>:<i>") read as a
    # fraction of 2**32 (its first 8 hex digits) is below the rate. It depends on the cell id alone, so
    # the choice is stable across runs, machines and the order cells are listed in.
    by_rule = {
        c.id for c in cells if int(hashlib.sha256(f"{c.id}:0".encode()).hexdigest()[:8], 16) < 0.3 * 2**32
    }
    assert picked == by_rule
    again = expand(load_spec(gen_spec(tmp_path, tiny_model_dir, questions=10, personas=2, pov_sets=3)))
    assert {c.id for c in reversed(again) if fault_for(everywhere, c)} == picked, "the choice is stable"
    assert 0 < len(picked) < len(cells)
    assert {c.id for c in cells if fault_for([Fault(cause="abort", rate=0.6)], c)} >= picked
    only_q3 = [Fault(cause="timeout", match={"question": "q3", "persona": ["a1"]})]
    assert {(c.question, c.persona) for c in cells if fault_for(only_q3, c)} == {("q3", "a1")}
    first_wins = [Fault(cause="segfault", match={"question": "q1"}), Fault(cause="abort")]
    assert {fault_for(first_wins, c) for c in cells if c.question == "q1"} == {"segfault"}
    assert {fault_for(first_wins, c) for c in cells if c.question != "q1"} == {"abort"}


# ---- issue 14: --limit, final writes, crash messages ------------------------------------------------------------


def _tracked_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Track into a sqlite store of this test's own; the CLI's retrieval is the stand-in retriever."""
    import runner.run.engine as engine

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(engine, "open_retriever", lambda exp: StubRetriever())
    return uri


def _execution_runs(uri: str) -> tuple[list[Any], list[Any]]:
    """(executions, cell runs), deleted ones included."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], "", ViewType.ALL)
    ]
    return (
        [r for r in runs if r.data.tags.get("pov.kind") == "execution"],
        [r for r in runs if r.data.tags.get("pov.kind") == "cell"],
    )


def test_limit_runs_part_of_one_execution_and_a_plain_run_finishes_it(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli

    spec = gen_spec(tmp_path, tiny_model_dir, questions=2, personas=1, pov_sets=2)
    uri = _tracked_project(tmp_path, monkeypatch)
    cells = [c.id for c in expand(load_spec(spec))]
    assert len(cells) == 4

    assert cli.main(["run", str(spec), "--fresh", "--limit", "1", "--quiet"]) == 0
    assert cli.main(["run", str(spec), "--limit", "1", "--quiet"]) == 0, "a later --limit run continues"
    out = capsys.readouterr().out
    parents, kids = _execution_runs(uri)
    assert len(parents) == 1 and len(kids) == 2, "each --limit run took cells not recorded yet"
    assert len({k.data.tags["pov.cell_id"] for k in kids}) == 2
    assert parents[0].data.tags["pov.state"] != "finished", "half the cells are not recorded yet"
    assert "not run (--limit" in out

    assert cli.main(["run", str(spec), "--quiet"]) == 0  # failed with "Changing param values is not allowed"
    out = capsys.readouterr().out
    assert "gen-test: 4 cells: 2 finished, 0 crashed, 2 already done" in out
    parents, kids = _execution_runs(uri)
    assert len(parents) == 1, "every run continued the one execution"
    parent = parents[0]
    assert parent.data.tags["pov.state"] == "finished" and parent.info.status == "FINISHED"
    assert parent.data.params["axis.pov_set"] == "p1,p2" and parent.data.params["axis.question"] == "q1,q2"
    assert sorted(k.data.tags["pov.cell_id"] for k in kids) == sorted(cells), "each cell recorded once"

    assert cli.main(["run", str(spec), "--limit", "1", "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(_execution_runs(uri)[1]) == 4


def _disk_full(*args: Any, **kwargs: Any) -> None:
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "summary.json.tmp")


def test_a_failed_summary_write_does_not_hide_the_error_that_stopped_the_run(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from runner.run.sinks import JsonlSink

    class ChromaWentAway(StubRetriever):
        def retrieve(self, keys: Any) -> Any:
            raise RuntimeError("chroma went away")

    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=2, personas=1, pov_sets=1))
    monkeypatch.setattr(JsonlSink, "finish", _disk_full)
    tracker = RecordingTracker()
    with pytest.raises(RuntimeError, match="chroma went away"):
        run_experiment(exp, expand(exp), tracker, retriever=ChromaWentAway(), quiet=True)
    assert "summary.json" in caplog.text and "No space left on device" in caplog.text
    assert tracker.finished is not None and tracker.finished["state"] == "interrupted", (
        "the tracker is closed"
    )


def test_a_failed_summary_write_after_the_run_is_a_clear_error(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.errors import RunAborted
    from runner.run.sinks import JsonlSink

    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=2, personas=1, pov_sets=1))
    cells = expand(exp)
    monkeypatch.setattr(JsonlSink, "finish", _disk_full)
    tracker = RecordingTracker(skip={c.id for c in cells})
    with pytest.raises(RunAborted) as e:
        run_experiment(exp, cells, tracker, retriever=StubRetriever(), quiet=True)
    message = str(e.value)
    assert "summary.json" in message and str(exp.state_dir / "runs") in message and "disk full?" in message
    assert tracker.finished is not None and tracker.finished["state"] == "finished"


def test_a_run_where_every_cell_crashed_the_same_way_exits_1_naming_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli

    (tmp_path / "model").mkdir()  # no config, no weights: the model cannot load
    spec = gen_spec(tmp_path, tmp_path / "model", questions=2, personas=1, pov_sets=1)
    _tracked_project(tmp_path, monkeypatch)
    code = cli.main(["run", str(spec), "--no-track", "--quiet"])
    captured = capsys.readouterr()
    results = read_results(Path(captured.out.split("results: ")[1].split()[0]))
    assert {r["status"] for r in results.values()} == {"crashed"} and len(results) == 2
    causes = {(r["cause"], r["error"].splitlines()[0]) for r in results.values()}
    assert len(causes) == 1
    ((cause, first_line),) = causes
    assert f"2 crashed: {cause} 2 — {first_line}" in captured.out
    assert code == 1, captured.out + captured.err
    assert f"every cell crashed the same way ({cause}: {first_line})" in captured.err


def test_a_full_disk_mid_run_is_a_clear_error(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from runner.errors import RunAborted
    from runner.run.sinks import JsonlSink

    def full(self: JsonlSink, results: list[Any]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    exp = load_spec(gen_spec(tmp_path, tiny_model_dir, questions=2, personas=1, pov_sets=1))
    monkeypatch.setattr(JsonlSink, "write", full)
    tracker = RecordingTracker()
    with pytest.raises(RunAborted) as e:
        run_experiment(exp, expand(exp), tracker, retriever=StubRetriever(), quiet=True)
    message = str(e.value)
    assert "results.jsonl: No space left on device (disk full?)" in message
    assert "0 of 2 cells recorded" in message and "run the same command to resume" in message
    assert tracker.finished is not None and tracker.finished["state"] == "interrupted"
