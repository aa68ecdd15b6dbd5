"""Issue 14, items 11-13 (part): no false drift from the tool's own files, short run ids, and a tracking URI
whose path is percent-encoded. Real git repositories, real MLflow stores, the real tracker."""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from runner.errors import UserError
from runner.run import CellResult, compare
from runner.run.environment import git_info
from runner.spec import Experiment, expand, load_spec
from runner.tracking import Kind, MlflowTracker, Tags, make_client

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "experiments" / "tiny.yaml"
TOOL_FILES = (
    ".pov/runs/quickstart/abc/results.jsonl",
    ".pov/chroma/chroma.sqlite3",
    "mlflow.db",
    "mlflow.db-wal",
    "mlflow.db-shm",
    "mlflow.db-journal",
    "mlflow.db.lock",
    "runs.db-wal",
    "mlruns/1/0123/artifacts/prompt.txt",
    "mlartifacts/1/x/artifacts/spec.yaml",
    "report/0123456789abcdef0123456789abcdef/report.html",
    "report/0123456789abcdef0123456789abcdef-vs-fedcba9876543210fedcba9876543210/latency.png",
    "sub/.pov/cache/file_hashes.json",
    "sub/mlflow.db-wal",
)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


# ------------------------------------------------------------------------------------------ 11. false drift


def test_git_info_ignores_the_tools_own_files_but_not_an_edit(tmp_path: Path) -> None:
    """No .gitignore in the project: the runner's state, MLflow stores with their WAL files, artifact folders
    and report folders still do not make the checkout dirty; an edited tracked file does."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "spec.yaml").write_text("name: drift\n")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.md").write_text(
        "A folder of the user's own that happens to be named report.\n"
    )
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "init")
    before = git_info(tmp_path / "sub")
    assert before["dirty"] is False and before["diff_hash"] is None

    for rel in TOOL_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"state")
    make_client(f"sqlite:///{tmp_path / 'sub' / 'runs.db'}").search_experiments()  # a spec's own store
    after = git_info(tmp_path / "sub")  # asked from a subfolder: the excludes hold for the whole checkout
    assert _git(
        tmp_path, "status", "--porcelain"
    ).strip()  # git itself sees them: only git_info leaves them out
    assert after == before
    assert compare({"git": before}, {"git": after}) == []

    (tmp_path / "spec.yaml").write_text("name: drift-edited\n")
    edited = git_info(tmp_path)
    assert edited["dirty"] is True and edited["diff_hash"]
    assert [d.field for d in compare({"git": before}, {"git": edited})] == ["git.dirty"]

    (tmp_path / "spec.yaml").write_text("name: drift\n")
    (tmp_path / "report" / "notes.md").write_text("edited\n")  # not a report folder of pov's: counts
    assert git_info(tmp_path)["dirty"] is True
    _git(tmp_path, "checkout", "--", "report/notes.md")
    assert git_info(tmp_path) == before
    with sqlite3.connect(tmp_path / "sub" / "data.db") as con:  # a sqlite file that is not a store: counts
        con.execute("create table runs (x)")
    assert git_info(tmp_path)["dirty"] is True


def test_the_projects_gitignore_covers_the_tools_files() -> None:
    paths = [
        "mlflow.db",
        "mlflow.db-wal",
        "mlflow.db-shm",
        "mlflow.db-journal",
        "mlflow.db.lock",
        ".pov/runs/x",
        "mlruns/1/x",
        "mlartifacts/1/x",
        "report/0123456789abcdef0123456789abcdef/report.html",
    ]
    done = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "--verbose", "--non-matching", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    missing = [ln.split("\t")[-1] for ln in done.stdout.splitlines() if ln.startswith("::")]
    assert missing == []


# ------------------------------------------------------------------------------------------ 12. short run ids


def _result(cell: Any) -> CellResult:
    stages = [{"name": "vector", "ids": ["a"], "texts": ["text a"], "scores": [0.5]}]
    return CellResult(
        cell=cell,
        status="finished",
        prompt=f"PROMPT {cell.id}",
        context={"stages": stages},
        output=f"# Answer\nOUT {cell.id}",
        metrics={"latency_s": 1.0, "prompt_tokens": 50.0, "new_tokens": 4.0},
        tags={"check.sections": "pass"},
        started_at=1_700_000_000.0,
        ended_at=1_700_000_001.0,
    )


def _record_execution(exp: Experiment, uri: str, fresh: bool = False) -> str:
    """One execution of two finished cells, written by the real tracker (no model runs)."""
    cells = expand(exp)[:2]
    tracker = MlflowTracker(uri, exp.spec.name)
    tracker.start(exp, cells, {"git": {"commit": None}}, fresh=fresh)
    tracker.log([_result(c) for c in cells])
    tracker.finish({})
    assert tracker.run_id
    return tracker.run_id


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[str]]:
    """A sqlite store in the working directory holding two executions of the quickstart."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    exp = load_spec(QUICKSTART)
    return uri, [_record_execution(exp, uri), _record_execution(exp, uri, fresh=True)]


def test_a_unique_prefix_resolves_to_its_execution(store: tuple[str, list[str]]) -> None:
    from runner.tracking.run_ids import MIN_PREFIX, resolve_run_id

    uri, ids = store
    client = make_client(uri, must_exist=True)
    for rid in ids:
        assert resolve_run_id(client, rid[:8]) == rid
        assert resolve_run_id(client, rid[:MIN_PREFIX].upper()) == rid
        assert resolve_run_id(client, rid) == rid
    with pytest.raises(UserError, match=r"no execution .* starts with .*mlflow ui.*pov report SPEC"):
        resolve_run_id(client, "ffffff" if not any(r.startswith("ffffff") for r in ids) else "eeeeee")
    with pytest.raises(UserError, match=f"at least {MIN_PREFIX}"):
        resolve_run_id(client, ids[0][:3])
    with pytest.raises(UserError, match="hexadecimal"):
        resolve_run_id(client, "not-a-run-id")
    cell = make_client(uri).search_runs(
        [make_client(uri).get_run(ids[0]).info.experiment_id], f"tags.`{Tags.KIND}` = '{Kind.CELL}'"
    )[0]
    with pytest.raises(UserError, match=f"a cell of execution {cell.data.tags[Tags.PARENT_RUN_ID]}"):
        resolve_run_id(client, cell.info.run_id[:10])


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    from mlflow.entities import Run, RunData, RunInfo, RunTag

    from runner.tracking.run_ids import pick_run_id

    def run(rid: str, name: str) -> Run:
        info = RunInfo(rid, "1", "u", "FINISHED", 1_700_000_000_000, None, "active", run_name=name)
        return Run(info, RunData(tags=[RunTag(Tags.KIND, Kind.EXECUTION)]))

    a, b = "abcdef01" + uuid.uuid4().hex[8:], "abcdef02" + uuid.uuid4().hex[8:]
    runs = [run(a, "first"), run(b, "second")]
    assert pick_run_id("abcdef01", runs) == a
    with pytest.raises(UserError, match="ambiguous") as e:
        pick_run_id("abcdef", runs)
    assert a in str(e.value) and b in str(e.value) and "first" in str(e.value)


def test_pov_report_takes_a_short_run_id(store: tuple[str, list[str]], tmp_path: Path) -> None:
    from runner.cli import main as cli
    from runner.tracking import Artifacts

    uri, (first, second) = store
    assert cli(["report", "--run", first[:8], "--compare", second[:8], "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    logged = {f.path for f in make_client(uri).list_artifacts(first)}
    assert Artifacts.report_vs(second) in logged  # the full id of the compared execution names the artifact
    assert cli(["report", "--run", first[:8], "--compare", first, "--no-log"]) == 2  # the same run twice


def test_pov_rerun_refuses_an_unknown_short_id_with_the_right_hint(
    store: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli import main as cli

    _, ids = store
    unknown = next(p for p in ("ffffff", "eeeeee", "dddddd") if not any(r.startswith(p) for r in ids))
    assert cli(["rerun", unknown]) == 2
    err = capsys.readouterr().err
    assert "no execution" in err and "pov report SPEC" in err and "MLFLOW_TRACKING_URI" not in err


# ------------------------------------------------------------------------------ 13(d). a path with spaces


def test_a_percent_encoded_store_path_leaves_no_encoded_folder(tmp_path: Path) -> None:
    """MLflow itself names a store `sqlite:////a%20b/mlflow.db` (mlflow.get_tracking_uri() in a folder with a
    space). SQLAlchemy decodes that path, but MLflow first creates the still-encoded parent folder."""
    from urllib.parse import quote

    project = tmp_path / "my project"
    project.mkdir()
    uri = "sqlite:///" + quote(str(project / "mlflow.db"))
    assert "%20" in uri
    client = make_client(uri)
    client.search_experiments()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my project"]
    assert (project / "mlflow.db").is_file()
