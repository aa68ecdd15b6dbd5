"""MlflowTracker against a real sqlite MLflow store, fed with CellResults built here (no model runs)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from runner.run import CellResult
from runner.spec import Cell, Experiment, expand, load_spec
from runner.tracking import MlflowTracker, NullTracker, make_tracker, resolve_tracking_uri

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "experiments" / "tiny.yaml"
MANIFEST = {
    "git": {"commit": "c0ffee", "branch": "main", "dirty": False},
    "gpu": {"name": "none"},
    "versions": {"python": "3.11", "mlflow": "3"},
    "corpus": {"fingerprint": "f1ng3r"},
    "models": {"tiny": {"resolved_revision": "rev1"}},
}


@pytest.fixture(scope="module")
def exp() -> Experiment:
    return load_spec(SPEC)


@pytest.fixture()
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)  # the default artifact root ./mlruns lands here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def context(cell: Cell) -> dict[str, Any]:
    ids = [f"{cell.question}-{i}" for i in range(cell.k[0])]
    stages = []
    for name, k in zip(("vector", "query", "pov"), cell.k, strict=True):
        stages.append(
            {
                "name": name,
                "ids": ids[:k],
                "texts": [f"text {i}" for i in ids[:k]],
                "scores": [1.0 - i / 20 for i in range(k)],
            }
        )
    return {"question": cell.question, "pov_set": cell.pov_set, "k": list(cell.k), "stages": stages}


def result(cell: Cell, status: str = "finished", cause: str | None = None) -> CellResult:
    crashed = status == "crashed"
    return CellResult(
        cell=cell,
        status=status,  # type: ignore[arg-type]
        prompt=f"PROMPT for {cell.id}",
        context=context(cell),
        output=None if crashed else f"# Answer\nOUTPUT for {cell.id}",
        cause=cause,
        error="RuntimeError: boom" if crashed else None,
        stderr_tail="Traceback ...\nRuntimeError: boom" if crashed else None,
        metrics={
            "latency_s": 1.5,
            "prompt_tokens": 100.0,
            "new_tokens": 8.0,
            "tokens_per_s": 5.3,
            "gpu_peak_allocated_mb": 0.0,
            "gpu_peak_reserved_mb": 0.0,
            "host_rss_mb": 300.0,
            "batch_size": 4.0,
            "attempts": 1.0,
            "complexity_words": 250.0,
        },
        tags={"check.sections": "pass"},
        started_at=1_700_000_000.0,
        ended_at=1_700_000_002.0,
    )


def tracker(exp: Experiment, uri: str, **kw: Any) -> MlflowTracker:
    return MlflowTracker(uri, exp.spec.name, **kw)


def children(uri: str, parent: str, deleted: bool = False) -> list[Any]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    eid = c.get_run(parent).info.experiment_id
    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    return list(c.search_runs([eid], f"tags.`mlflow.parentRunId` = '{parent}'", view, 10_000))


def executions(uri: str, exp: Experiment) -> list[Any]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    e = c.get_experiment_by_name(exp.spec.name)
    return list(c.search_runs([e.experiment_id], "tags.`pov.kind` = 'execution'"))


def live_by_cell(uri: str, parent: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in children(uri, parent):
        out.setdefault(r.data.tags["pov.cell_id"], []).append(r)
    return out


def test_schema_of_parent_and_children(exp: Experiment, uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    cells = expand(exp)
    t = tracker(exp, uri)
    assert t.start(exp, cells, MANIFEST) == set()
    t.log([result(c) for c in cells[:-1]])
    t.log([result(cells[-1], "crashed", "segfault")])
    t.finish({"cells_finished": len(cells) - 1, "generate_time_s": 3.0, "state": "finished"})

    c = MlflowClient(uri)
    parent = c.get_run(t.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith(f"{exp.spec.name}-")
    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    assert tags["pov.kind"] == "execution" and tags["pov.state"] == "finished"
    assert tags["pov.schema_version"] == "1"
    assert tags["pov.spec_hash"] == exp.spec_hash and tags["pov.spec_name"] == exp.spec.name
    assert (tags["git.commit"], tags["git.branch"], tags["git.dirty"]) == ("c0ffee", "main", "false")
    assert tags["corpus.fingerprint"] == "f1ng3r" and tags["gpu.name"] == "none"
    assert tags["version.mlflow"] == "3" and tags["version.unsloth"] == "not installed"
    assert params["spec_hash"] == exp.spec_hash
    assert set(params["axis.template"].split(",")) == {c.template for c in cells}
    assert params["axis.k"] == cells[0].k_label
    assert metrics["cells_total"] == len(cells)
    assert metrics["cells_finished"] == len(cells) - 1 and metrics["cells_crashed"] == 1
    assert metrics["crashed.segfault"] == 1 and metrics["wall_time_s"] > 0
    assert metrics["session.generate_time_s"] == 3.0
    stored = {f.path for f in c.list_artifacts(t.run_id)}
    assert {"spec.yaml", "manifest.json", "templates"} <= stored
    assert {f.path for f in c.list_artifacts(t.run_id, "templates")} == {
        f"templates/{n}.j2" for n in exp.templates
    }

    kids = live_by_cell(uri, t.run_id)
    assert set(kids) == {c.id for c in cells} and all(len(v) == 1 for v in kids.values())
    ok, bad = kids[cells[0].id][0], kids[cells[-1].id][0]
    assert ok.info.status == "FINISHED" and ok.info.run_name == cells[0].id
    assert ok.data.tags["pov.status"] == "finished" and "pov.cause" not in ok.data.tags
    assert ok.data.tags["check.sections"] == "pass" and ok.data.tags["pov.kind"] == "cell"
    axes = {
        "model": cells[0].model,
        "template": cells[0].template,
        "persona": cells[0].persona,
        "pov_set": cells[0].pov_set,
        "question": cells[0].question,
        "k": cells[0].k_label,
    }
    assert {k: ok.data.params[k] for k in axes} == axes
    assert ok.data.params["model_name"] == "builtin:tiny-llama" and ok.data.params["model_revision"] == "rev1"
    assert ok.data.metrics["latency_s"] == 1.5 and ok.data.metrics["stage1_top_score"] == 1.0
    assert ok.data.metrics["stage3_mean_score"] == pytest.approx(sum(1 - i / 20 for i in range(5)) / 5)
    assert bad.info.status == "FAILED"
    assert bad.data.tags["pov.status"] == "crashed" and bad.data.tags["pov.cause"] == "segfault"

    out = Path(tmp_path / "dl")
    out.mkdir()
    ok_files = Path(c.download_artifacts(ok.info.run_id, "", str(out / "ok")))
    assert sorted(p.name for p in ok_files.iterdir()) == ["context.json", "output.md", "prompt.txt"]
    assert (ok_files / "output.md").read_text() == f"# Answer\nOUTPUT for {cells[0].id}"
    assert json.loads((ok_files / "context.json").read_text()) == context(cells[0])
    bad_files = Path(c.download_artifacts(bad.info.run_id, "", str(out / "bad")))
    assert sorted(p.name for p in bad_files.iterdir()) == ["context.json", "prompt.txt", "stderr.txt"]
    assert "RuntimeError: boom" in (bad_files / "stderr.txt").read_text()


def test_kill_between_create_and_finish_redoes_the_cell(
    exp: Experiment, uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tempfile

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    cells = expand(exp)
    t = tracker(exp, uri)
    t.start(exp, cells, MANIFEST)
    t.log([result(c) for c in cells[:3]])
    # A kill after the child is created and logged but before it is set FINISHED: the store is left with
    # a RUNNING child, exactly as after SIGKILL (the process never gets to run anything else).
    client = t.client
    monkeypatch.setattr(client, "set_terminated", lambda *a, **k: (_ for _ in ()).throw(SystemExit("kill")))
    with pytest.raises(SystemExit):
        t.log([result(cells[3])])
    assert not list(scratch_root.iterdir())  # the cell's scratch files went with the failed call
    monkeypatch.undo()
    assert sum(r.info.status == "RUNNING" for r in children(uri, t.run_id)) == 1

    t2 = tracker(exp, uri)
    skip = t2.start(exp, cells, MANIFEST)
    assert t2.run_id == t.run_id and t2.resumed
    assert skip == {c.id for c in cells[:3]}
    t2.log([result(c) for c in cells if c.id not in skip])
    t2.finish({})
    kids = live_by_cell(uri, t.run_id)
    assert set(kids) == {c.id for c in cells}
    assert all(len(v) == 1 and v[0].info.status == "FINISHED" for v in kids.values())
    dead = [r for r in children(uri, t.run_id, deleted=True) if r.info.lifecycle_stage == "deleted"]
    assert [(r.data.tags["pov.cell_id"], r.info.status, r.data.tags["pov.superseded"]) for r in dead] == [
        (cells[3].id, "KILLED", "true")
    ]
    assert len(executions(uri, exp)) == 1


def test_crashed_cells_are_kept_unless_retry_crashed(exp: Experiment, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    cells = expand(exp)[:6]
    t = tracker(exp, uri)
    t.start(exp, cells, MANIFEST)
    t.log([result(c) for c in cells[:4]] + [result(c, "crashed", "cuda_oom") for c in cells[4:]])
    t.finish({})
    assert MlflowClient(uri).get_run(t.run_id).data.tags["pov.state"] == "finished"

    # Same spec again without --retry-crashed: the execution is complete, so there is nothing to do.
    t2 = tracker(exp, uri)
    assert t2.start(exp, cells, MANIFEST) == {c.id for c in cells} and t2.run_id == t.run_id
    t2.finish({})
    assert len(executions(uri, exp)) == 1

    # --fresh starts a new execution; --retry-crashed then reopens it and retries only its crashes.
    t3 = tracker(exp, uri)
    t3.start(exp, cells, MANIFEST, fresh=True)
    t3.log([result(c) for c in cells[:4]] + [result(c, "crashed", "cuda_oom") for c in cells[4:]])
    t3.finish({})
    t4 = tracker(exp, uri)
    skip = t4.start(exp, cells, MANIFEST, retry_crashed=True)
    assert t4.run_id == t3.run_id and skip == {c.id for c in cells[:4]}
    t4.log([result(c) for c in cells[4:]])
    t4.finish({})
    run = MlflowClient(uri).get_run(t3.run_id)
    assert run.data.tags["pov.state"] == "finished" and run.info.status == "FINISHED"
    assert run.data.metrics["cells_crashed"] == 0 and run.data.metrics["cells_finished"] == len(cells)
    kids = live_by_cell(uri, t3.run_id)
    assert all(len(v) == 1 and v[0].data.tags["pov.status"] == "finished" for v in kids.values())
    superseded = [r for r in children(uri, t3.run_id, deleted=True) if r.info.lifecycle_stage == "deleted"]
    assert sorted(r.data.tags["pov.cell_id"] for r in superseded) == sorted(c.id for c in cells[4:])
    assert all(r.data.tags["pov.cause"] == "cuda_oom" for r in superseded)  # the crash record is kept


def test_resume_keeps_one_child_when_a_cell_was_logged_twice(exp: Experiment, uri: str) -> None:
    """A kill between logging a retried cell and superseding its crash leaves two live children."""
    cells = expand(exp)[:3]
    t = tracker(exp, uri)
    t.start(exp, cells, MANIFEST)
    t.log([result(cells[0], "crashed", "abort"), result(cells[1])])
    t._live.clear()
    t.log([result(cells[0])])  # same cell again, as if the crash had not been superseded yet
    assert len(live_by_cell(uri, t.run_id)[cells[0].id]) == 2

    t2 = tracker(exp, uri)
    assert t2.start(exp, cells, MANIFEST) == {cells[0].id, cells[1].id}
    kids = live_by_cell(uri, t.run_id)
    assert len(kids[cells[0].id]) == 1 and kids[cells[0].id][0].data.tags["pov.status"] == "finished"


def test_interrupted_execution_resumes_and_fresh_starts_anew(exp: Experiment, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    cells = expand(exp)[:4]
    t = tracker(exp, uri)
    t.start(exp, cells, MANIFEST)
    t.log([result(cells[0])])
    t.finish({"state": "interrupted"})
    run = MlflowClient(uri).get_run(t.run_id)
    assert run.data.tags["pov.state"] == "interrupted" and run.info.status == "KILLED"

    drifted = {**MANIFEST, "git": {**MANIFEST["git"], "commit": "beef"}}
    t2 = tracker(exp, uri)
    assert t2.start(exp, cells, drifted) == {cells[0].id} and t2.run_id == t.run_id
    assert [d.field for d in t2.drifts] == ["git.commit"]
    run = MlflowClient(uri).get_run(t.run_id)
    assert run.data.tags["pov.state"] == "running" and run.data.tags["pov.sessions"] == "2"

    t3 = tracker(exp, uri)
    assert t3.start(exp, cells, MANIFEST, fresh=True) == set() and t3.run_id != t.run_id
    assert len(executions(uri, exp)) == 2


def test_tracking_uri_order(exp: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(exp.spec.tracking.uri) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp.spec.tracking.uri = "sqlite:///from-spec.db"
    try:
        assert resolve_tracking_uri(exp.spec.tracking.uri) == "sqlite:///from-spec.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
        assert resolve_tracking_uri(exp.spec.tracking.uri) == "sqlite:///from-env.db"
        assert make_tracker(exp, False).tracking_uri == "sqlite:///from-env.db"  # type: ignore[attr-defined]
    finally:
        exp.spec.tracking.uri = None


def test_no_track_records_nothing(exp: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    t = make_tracker(exp, True)
    assert isinstance(t, NullTracker)
    cells = expand(exp)
    assert t.start(exp, cells, MANIFEST) == set()
    t.log([result(cells[0])])
    t.finish({})
    assert list(tmp_path.iterdir()) == []


def test_default_store_is_a_sqlite_db_that_mlflow_reads(
    exp: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = make_tracker(exp, False)
    cells = expand(exp)[:2]
    t.start(exp, cells, MANIFEST)
    t.log([result(c) for c in cells])
    t.finish({})
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        names = {row[0] for row in db.execute("select name from runs")}
    assert {c.id for c in cells} <= names


def test_top_score_is_the_highest_even_when_scores_are_not_sorted(exp: Experiment, uri: str) -> None:
    """The tracker once took a stage's first score and the report the highest; both must be the highest,
    whether the score comes with the result (as the engine sends it) or is worked out from the context."""
    from runner.run import stage_metrics

    scores = ([0.2, 0.9, 0.5, 0.1], [0.3, 0.7, 0.6], [0.1, 0.8])
    cells = expand(exp)[:2]
    results = []
    for cell in cells:
        r = result(cell)
        for stage, s in zip(r.context["stages"], scores, strict=True):
            stage["ids"], stage["scores"] = stage["ids"][: len(s)], s
        results.append(r)
    results[1].metrics |= stage_metrics(results[1].context)  # what the engine's prepare step adds
    assert not any(k.startswith("stage") for k in results[0].metrics)
    t = tracker(exp, uri)
    t.start(exp, cells, MANIFEST)
    t.log(results)
    t.finish({})
    for cell in cells:
        (child,) = live_by_cell(uri, t.run_id)[cell.id]
        got = {k: v for k, v in child.data.metrics.items() if k.startswith("stage")}
        assert got == {
            "stage1_top_score": 0.9,
            "stage2_top_score": 0.7,
            "stage3_top_score": 0.8,
            "stage3_mean_score": pytest.approx(0.45),
        }, cell.id


def test_only_executions_of_this_schema_version_are_resumed(exp: Experiment, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    cells = expand(exp)[:2]
    t = tracker(exp, uri)
    t.start(exp, cells, MANIFEST)
    t.log([result(cells[0])])
    t.finish({"state": "interrupted"})
    # Written before the tag existed: version 1, resumed, and tagged now.
    c.delete_tag(t.run_id, "pov.schema_version")
    t2 = tracker(exp, uri)
    assert t2.start(exp, cells, MANIFEST) == {cells[0].id} and t2.run_id == t.run_id
    assert c.get_run(t.run_id).data.tags["pov.schema_version"] == "1"
    t2.finish({"state": "interrupted"})
    # Written by a runner of another schema version: left alone, a new execution starts.
    c.set_tag(t.run_id, "pov.schema_version", "2")
    t3 = tracker(exp, uri)
    assert t3.start(exp, cells, MANIFEST) == set() and t3.run_id != t.run_id
    assert c.get_run(t.run_id).data.tags["pov.schema_version"] == "2"


def test_schema_names_every_artifact_the_spec_snapshot_writes(exp: Experiment) -> None:
    from runner.spec import snapshot_files
    from runner.tracking import Artifacts

    assert set(snapshot_files(exp)) == {Artifacts.SPEC, *(Artifacts.template(n) for n in exp.templates)}


def test_schema_doc_lists_every_name_and_is_current() -> None:
    from runner.tracking import schema

    namespaces = {"Tags": schema.Tags, "Params": schema.Params, "Metrics": schema.Metrics}
    namespaces["Artifacts"] = schema.Artifacts
    namespaces["Traces"] = schema.Traces
    assert set(namespaces) == set(schema.DOCS)
    for section, namespace in namespaces.items():
        names = {v for k, v in vars(namespace).items() if k.isupper() and isinstance(v, str)}
        assert names <= set(schema.DOCS[section]), (
            f"{section}: undocumented {names - set(schema.DOCS[section])}"
        )
    assert (ROOT / "docs" / "mlflow-schema.md").read_text(encoding="utf-8") == schema.markdown(), (
        "regenerate it: python -m runner.tracking.schema > docs/mlflow-schema.md"
    )


# ------------------------------------------------------------------------------------------------ manifest


def _git(repo: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A small git repository with a spec, a corpus, a template and a local model folder."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.md").write_text("Alpha paragraph about trade.\n")
    (tmp_path / "corpus" / "b.md").write_text("Beta paragraph about alliances.\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"layers": 2}')
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x00" * 1024)
    (tmp_path / "t.j2").write_text((ROOT / "templates" / "opinion_only.j2").read_text())
    (tmp_path / "spec.yaml").write_text(
        "name: mani\ncorpus: {path: corpus, collection: mani-test}\n"
        "questions: [{id: q1, text: What happens next}]\npov_sets: {s: [One view.]}\n"
        "personas: {p: You are terse.}\ntemplates: {t: t.j2}\n"
        f"models: {{m: {{name: {tmp_path / 'model'}}}}}\n"
    )
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "-c", "user.email=t@example.org", "-c", "user.name=t", "add", "-A")
    _git(tmp_path, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "init")
    (tmp_path / ".gitignore").write_text(".pov/\n")
    _git(tmp_path, "-c", "user.email=t@example.org", "-c", "user.name=t", "add", ".gitignore")
    _git(tmp_path, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "ignore")
    return tmp_path


def test_manifest_records_and_compare_names_each_drift(project: Path) -> None:
    from runner.run import build_manifest, compare

    exp = load_spec(project / "spec.yaml")
    first = build_manifest(exp)
    assert first["git"]["dirty"] is False and len(first["git"]["commit"]) == 40
    assert first["versions"]["mlflow"] and first["versions"]["python"]
    assert set(first["versions"]) >= {"torch", "transformers", "unsloth", "chromadb", "sentence-transformers"}
    assert set(first["corpus"]["files"]) == {"a.md", "b.md"}
    assert first["models"]["m"]["source"] == "local" and first["models"]["m"]["files_hash"]
    assert compare(first, build_manifest(exp)) == []  # nothing changed: no drift

    (project / "corpus" / "b.md").write_text("Beta paragraph, edited.\n")
    (project / "model" / "weights.bin").write_bytes(b"\x01" * 1024)
    drifts = {d.field: d for d in compare(first, build_manifest(exp))}
    assert set(drifts) == {"git.dirty", "corpus.fingerprint", "models.m.files_hash"}
    assert "changed: b.md" in str(drifts["corpus.fingerprint"])
    assert (drifts["git.dirty"].old, drifts["git.dirty"].new) == (False, True)

    (project / "corpus" / "c.md").write_text("Gamma.\n")
    second = build_manifest(exp)
    (project / "corpus" / "c.md").unlink()
    (project / "corpus" / "a.md").unlink()
    third = compare(second, build_manifest(exp))
    corpus = next(d for d in third if d.field == "corpus.fingerprint")
    assert corpus.detail == "removed: a.md, c.md"


def test_compare_ignores_fields_an_older_manifest_lacks() -> None:
    from runner.run import compare

    old = {"versions": {"torch": "2.1"}, "git": {"commit": "a"}}
    new = {
        "versions": {"torch": "2.2", "ray": "2.6"},
        "git": {"commit": "a", "dirty": True},
        "gpu": {"name": "H100"},
    }
    assert [(d.field, d.old, d.new) for d in compare(old, new)] == [("versions.torch", "2.1", "2.2")]


def test_package_versions_match_each_packages_metadata() -> None:
    import importlib.metadata

    from runner.run.environment import package_versions

    versions = package_versions()
    for pkg in ("torch", "transformers", "numpy", "mlflow", "pov-runner", "unsloth"):
        try:
            expected: str | None = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            expected = None
        assert versions[pkg] == expected, pkg


def test_gpu_names_come_from_the_driver_in_bus_order(tmp_path: Path) -> None:
    from runner.run.environment import _driver_gpu_names

    for bus, model in (("0000:41:00.0", "NVIDIA H200"), ("0000:06:00.0", "NVIDIA H100 80GB HBM3")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 41\nBus Type: \t PCIe\n"
        )
    assert _driver_gpu_names(tmp_path) == ["NVIDIA H100 80GB HBM3", "NVIDIA H200"]
    (tmp_path / "0000:99:00.0").mkdir()  # a GPU whose file cannot be read: the caller asks nvidia-smi
    assert _driver_gpu_names(tmp_path) == []
    assert _driver_gpu_names(tmp_path / "absent") == []


ROUNDS = 3


def _create_fresh_stores(folder: str, me: str, other: str) -> None:
    """In each round, wait until the other process is ready too, then open a fresh sqlite store in the
    round's folder and use it; print `ok` for each round (a failure ends the process with its traceback)."""
    import time

    from runner.tracking import make_client

    for n in range(ROUNDS):
        round_dir = Path(folder, f"round{n}")
        (round_dir / f"ready-{me}").touch()
        deadline = time.monotonic() + 60
        while not (round_dir / f"ready-{other}").exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"round {n}: the other process never came")
            time.sleep(0.001)
        client = make_client(f"sqlite:///{round_dir / 'mlflow.db'}")
        client.search_experiments(max_results=1)
        print("ok", flush=True)


def test_two_processes_creating_one_fresh_store_both_succeed(tmp_path: Path) -> None:
    """MLflow's schema migration is not safe against a second process doing the same: unguarded, the
    loser died on `duplicate column name: step`."""
    import os
    import subprocess
    import sys

    for n in range(ROUNDS):
        (tmp_path / f"round{n}").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH")) if p)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import test_tracking as t; t._create_fresh_stores({str(tmp_path)!r}, {me!r}, {other!r})",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    outcomes = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("store creation did not finish within 180 s")
        outcomes.append((proc.returncode, out.split(), err[-2000:]))
    for rc, out, err in outcomes:
        assert rc == 0 and out == ["ok"] * ROUNDS, err
