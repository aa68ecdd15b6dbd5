"""`pov rerun RUN_ID` end to end: same rankings and outputs on the same machine; a named drift after a corpus
file changes. The real SmolLM2 of the quickstart decodes greedily, so identical inputs must give identical
answers (real sentences, where a random model's gibberish could hide a drift)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.cli import main as cli
from runner.errors import UserError
from runner.tracking import Artifacts, Kind, State, Tags, tag_is

pytestmark = pytest.mark.slow
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per download is noise
ROOT = Path(__file__).resolve().parent.parent
POV = str(Path(sys.executable).parent / "pov")
EDITED = "04_japan_alliances_trade.md"

SPEC = f"""\
name: reruntest
extends: {ROOT / "experiments" / "quickstart.yaml"}
corpus: {{path: brics}}
generation: {{max_new_tokens: 24, temperature: 0.0, seed: 0, batch_size: 4}}
matrix:
  template: [brief_summary_opinion, brief_opinion]
  persona: [professor]
  pov_set: [global_south, security]
  question: [japan-alliances]
  exclude: []
tracking: {{experiment: reruntest}}
"""


def _pov(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MLFLOW_TRACKING_URI=_uri(tmp))
    done = subprocess.run([POV, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pov {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def _uri(tmp: Path) -> str:
    return f"sqlite:///{tmp}/mlflow.db"


def _client(tmp: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(_uri(tmp))


def _executions(tmp: Path) -> list[Any]:
    c = _client(tmp)
    eid = c.get_experiment_by_name("reruntest").experiment_id
    return list(
        c.search_runs([eid], tag_is(Tags.KIND, Kind.EXECUTION), order_by=["attributes.start_time ASC"])
    )


def _cells(tmp: Path, parent: Any, dest: Path) -> dict[str, dict[str, Any]]:
    """Per cell id: its output and the three ranked stages, read back from the child run's artifacts."""
    c = _client(tmp)
    kids = c.search_runs([parent.info.experiment_id], tag_is(Tags.PARENT_RUN_ID, parent.info.run_id))
    out = {}
    for kid in kids:
        files = Path(c.download_artifacts(kid.info.run_id, "", str(dest / kid.info.run_id)))
        out[kid.data.tags[Tags.CELL_ID]] = {
            "output": (files / Artifacts.OUTPUT).read_text(encoding="utf-8"),
            "stages": json.loads((files / Artifacts.CONTEXT).read_text(encoding="utf-8"))["stages"],
            "prompt": (files / Artifacts.PROMPT).read_text(encoding="utf-8"),
        }
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tmp = tmp_path_factory.mktemp("rerun")
    shutil.copytree(ROOT / "data" / "brics", tmp / "brics")
    (tmp / "spec.yaml").write_text(SPEC)
    _pov(tmp, "ingest", "spec.yaml")
    _pov(tmp, "run", "spec.yaml", "--quiet")
    [original] = _executions(tmp)
    return tmp, original


def test_rerun_reproduces_rankings_and_outputs_then_names_a_corpus_drift(project: tuple[Path, Any]) -> None:
    tmp, original = project
    old_id = original.info.run_id
    done = _pov(tmp, "rerun", old_id, "--quiet")
    assert "drift: corpus" not in done.stdout
    runs = _executions(tmp)
    assert len(runs) == 2
    new = runs[1]
    assert new.data.tags[Tags.RERUN_OF] == old_id and new.data.tags[Tags.STATE] == State.FINISHED
    assert new.data.tags[Tags.SPEC_NAME] == "reruntest"
    old_cells, new_cells = _cells(tmp, original, tmp / "dl-old"), _cells(tmp, new, tmp / "dl-new")
    assert len(old_cells) == 4 and set(new_cells) == set(old_cells)
    for cid, old in old_cells.items():
        assert new_cells[cid]["stages"] == old["stages"], cid  # ids, texts and scores of all three stages
        assert new_cells[cid]["prompt"] == old["prompt"], cid
        assert new_cells[cid]["output"] == old["output"], cid
    assert "outputs identical in 4/4 cells, rankings identical in 4/4" in done.stdout

    corpus_file = tmp / "brics" / EDITED
    corpus_file.write_text(corpus_file.read_text() + "\nJapan signed an entirely hypothetical pact today.\n")
    drifted = _pov(tmp, "rerun", old_id, "--quiet")
    lines = [ln for ln in drifted.stdout.splitlines() if ln.startswith("drift: corpus.fingerprint")]
    assert len(lines) == 1 and EDITED in lines[0], drifted.stdout
    assert len(_executions(tmp)) == 3


def test_rerun_refuses_what_is_not_an_execution(project: tuple[Path, Any]) -> None:
    from runner.tracking.reproduce import prepare

    tmp, original = project
    with pytest.raises(UserError, match="no run"):
        prepare("0123456789abcdef0123456789abcdef", _uri(tmp))
    c = _client(tmp)
    kid = c.search_runs([original.info.experiment_id], tag_is(Tags.PARENT_RUN_ID, original.info.run_id))[0]
    with pytest.raises(UserError, match=f"pov rerun {original.info.run_id}"):
        prepare(kid.info.run_id, _uri(tmp))


def test_snapshot_loads_standalone(project: tuple[Path, Any], tmp_path: Path) -> None:
    """The stored spec.yaml and templates load with no other file than the corpus, and expand to the same cells."""
    from runner.spec import expand, load_spec

    tmp, original = project
    dest = Path(_client(tmp).download_artifacts(original.info.run_id, "", str(tmp_path / "snap")))
    moved = tmp_path / "elsewhere"
    shutil.copytree(dest, moved)
    exp = load_spec(moved / Artifacts.SPEC)
    assert {c.id for c in expand(exp)} == {c.id for c in expand(load_spec(tmp / "spec.yaml"))}
    assert all(Path(t.path).is_relative_to(moved) for t in exp.templates.values())


def test_rerun_refuses_a_store_that_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow would create an empty mlflow.db and then not find the run in it; nothing is created."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli(["rerun", "0123456789abcdef0123456789abcdef"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_rerun_of_a_spec_with_a_redacted_secret_compares_its_cells(tmp_path: Path) -> None:
    """The stored spec.yaml holds `[redacted MY_SERVICE_TOKEN]` where the persona had the token: the rerun
    puts the value back from the environment, so its cells are the same cells; without the variable it
    refuses before recording anything rather than compare 0/0 cells."""
    import secrets as pysecrets

    token = "tok_" + pysecrets.token_hex(12)
    (tmp_path / "brics").symlink_to(ROOT / "data" / "brics", target_is_directory=True)
    (tmp_path / "spec.yaml").write_text(
        SPEC.replace("name: reruntest", "name: secretrerun")
        .replace("quickstart.yaml", "tiny.yaml")  # what is checked is the secret, not the language
        .replace(
            "template: [brief_summary_opinion, brief_opinion]", "template: [summary_opinion, opinion_only]"
        )
        .replace("persona: [professor]", "persona: [keyholder]")
        .replace("pov_set: [global_south, security]", "pov_set: [global_south]")
        .replace("tracking: {experiment: reruntest}", "tracking: {experiment: secretrerun}")
        + f'personas: {{keyholder: "You are an analyst; your service token is {token}."}}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MLFLOW_TRACKING_URI=_uri(tmp_path),
        MY_SERVICE_TOKEN=token,
    )

    def pov(*args: str, environ: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POV, *args], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=900
        )

    for args in (["ingest", "spec.yaml"], ["run", "spec.yaml", "--quiet"]):
        assert pov(*args).returncode == 0
    c = _client(tmp_path)
    eid = c.get_experiment_by_name("secretrerun").experiment_id
    [original] = c.search_runs([eid], tag_is(Tags.KIND, Kind.EXECUTION))
    stored = Path(c.download_artifacts(original.info.run_id, Artifacts.SPEC, str(tmp_path / "dl")))
    assert "[redacted MY_SERVICE_TOKEN]" in stored.read_text() and token not in stored.read_text()

    unset = {k: v for k, v in env.items() if k != "MY_SERVICE_TOKEN"}
    refused = pov("rerun", original.info.run_id, "--quiet", environ=unset)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "MY_SERVICE_TOKEN" in refused.stderr and "personas.keyholder" in refused.stderr
    assert len(c.search_runs([eid], tag_is(Tags.KIND, Kind.EXECUTION))) == 1  # nothing recorded

    done = pov("rerun", original.info.run_id[:8], "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "outputs identical in 2/2 cells, rankings identical in 2/2" in done.stdout, done.stdout
    assert token not in done.stdout + done.stderr
    assert (
        "put back from the environment where the stored spec had them redacted: MY_SERVICE_TOKEN"
        in done.stdout
    )
    assert len(c.search_runs([eid], tag_is(Tags.RERUN_OF, original.info.run_id))) == 1
    leftover = [
        p for p in (tmp_path / ".pov" / "reruns").rglob("*") if p.is_file() and token in p.read_text()
    ]
    assert leftover == []  # the value was on disk only while the snapshot was loaded
