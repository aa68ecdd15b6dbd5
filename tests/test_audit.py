"""`pov audit`: a sample of an execution's cells generated again alone, each answer compared with the one
recorded in its batch. The tiny model in bfloat16 on the CPU gives some answers that really change between a
batch of 8 and batch 1 (padding changes the rounding); the oracle is the backend itself, loaded here and
asked for each stored prompt alone, not the audit's own code path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import StubRetriever, gen_spec

from runner.cli import main as cli
from runner.tracking.audit import CHANGED, IDENTICAL, pick_sample, word_diff


def test_word_diff_marks_changed_words_and_elides_long_unchanged_runs() -> None:
    before = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    after = "one two three four five six seven EIGHT nine ten eleven twelve thirteen fourteen extra"
    assert (
        word_diff(before, after, context=2)
        == "… six seven [-eight-] {+EIGHT+} nine ten … thirteen fourteen {+extra+}"
    )
    assert word_diff("a b", "a  b\n") == ""  # only the spacing differs
    assert word_diff("", "new words") == "{+new words+}"


def test_a_larger_sample_holds_a_smaller_one() -> None:
    ids = [f"cell{i}" for i in range(40)]
    five, ten = pick_sample(ids, 5, seed=3), pick_sample(ids, 10, seed=3)
    assert len(five) == 5 and five == ten[:5]
    assert pick_sample(list(reversed(ids)), 5, seed=3) == five, "not the listing order"
    assert pick_sample(ids, 5, seed=4) != five
    assert sorted(pick_sample(ids, None, seed=0)) == sorted(ids)


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    """8 cells of the tiny model in bfloat16, generated as one batch of 8, recorded in MLflow."""
    from runner.run.engine import run_experiment
    from runner.spec import expand, load_spec
    from runner.tracking import MlflowTracker

    tmp = tmp_path_factory.mktemp("audit")
    path = gen_spec(tmp, tiny_model_dir, questions=2, personas=2, pov_sets=2, limits="{cell_timeout_s: 60}")
    text = (
        path.read_text()
        .replace("batch_size: 4", "batch_size: 8")
        .replace("max_new_tokens: 4", "max_new_tokens: 24")
    )
    path.write_text(text.replace("device: cpu}", "device: cpu, dtype: bfloat16}"))
    exp = load_spec(path)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "audit")
    summary = run_experiment(exp, expand(exp), tracker, retriever=StubRetriever(), quiet=True)
    assert summary.finished == 8
    return {"uri": uri, "run_id": str(tracker.run_id), "exp": exp, "tmp": tmp}


def alone(batched_run: dict[str, Any], prompts: dict[str, str]) -> dict[str, str]:
    """Each prompt generated alone by the backend itself (the oracle)."""
    from runner.generation.backends.transformers import TransformersBackend

    exp = batched_run["exp"]
    backend = TransformersBackend(exp.spec.models["tiny"])
    return {cid: backend.generate([p], exp.spec.generation)[0].text for cid, p in prompts.items()}


def stored(client: Any, run_ids: dict[str, str], name: str, dest: Path) -> dict[str, str]:
    out = {}
    for cid, rid in run_ids.items():
        (dest / cid).mkdir(parents=True, exist_ok=True)
        out[cid] = Path(client.download_artifacts(rid, name, str(dest / cid))).read_text()
    return out


@pytest.mark.slow
def test_each_sampled_cell_is_identical_or_changed_as_it_is_alone(
    batched_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every cell audited alone, through `pov audit --all --json`: each verdict is what the backend gives
    for the prompt alone against what was recorded. One recorded answer that does not depend on its batch
    is first replaced by an edited copy: the audit must call it changed and show exactly the edit."""
    import json

    from runner.report import build, load_execution
    from runner.tracking import make_client

    monkeypatch.chdir(batched_run["tmp"])
    client = make_client(batched_run["uri"])
    runs = {c.cell_id: c.run_id for c in load_execution(client, batched_run["run_id"]).cells}
    prompts = stored(client, runs, "prompt.txt", batched_run["tmp"] / "prompts")
    recorded = stored(client, runs, "output.md", batched_run["tmp"] / "outputs")
    oracle = alone(batched_run, prompts)
    steady = sorted(cid for cid in runs if oracle[cid] == recorded[cid])
    assert steady, "some answer must not depend on its batch, to edit"
    edited = steady[0]
    words = recorded[edited].split()
    recorded[edited] = " ".join(["TAMPERED", *words[1:]])
    client.log_text(runs[edited], recorded[edited], "output.md")

    assert (
        cli(["audit", batched_run["run_id"][:8], "--all", "--json", "--tracking-uri", batched_run["uri"]])
        == 0
    )
    outcome = json.loads(capsys.readouterr().out)
    cells = {c["cell_id"]: c for c in outcome["cells"]}
    assert set(cells) == set(runs) and outcome["batch_size"] == 1 and outcome["finished"] == 8
    for cid, c in cells.items():
        assert c["verdict"] == (IDENTICAL if oracle[cid] == recorded[cid] else CHANGED), c
        assert (c["recorded"], c["rerun"], c["batch_size"]) == (recorded[cid], oracle[cid], 8)
    assert cells[edited]["diff"].startswith(f"[-TAMPERED-] {{+{words[0]}+}} ")
    # Recorded: a tag per audited cell, which the report counts and names; the findings on the execution.
    execution = load_execution(client, batched_run["run_id"])
    changed = {cid for cid, c in cells.items() if c["verdict"] == CHANGED}
    tags = {c.cell_id: c.tags["pov.batch_sensitive"] for c in execution.cells}
    assert tags == {cid: "true" if cid in changed else "false" for cid in runs}
    flagged = build([execution])["executions"][0]["batch_sensitive"]
    assert (flagged["audited"], flagged["changed"]) == (8, len(changed))
    assert {c["cell_id"] for c in flagged["cells"]} == changed
    assert outcome["artifact"] in {f.path for f in client.list_artifacts(batched_run["run_id"], "audit")}


def test_the_audit_prints_a_verdict_per_cell_and_the_diff_of_a_change(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from runner.commands.audit import print_outcome
    from runner.tracking.audit import CRASHED, AuditedCell, AuditOutcome

    outcome = AuditOutcome("run1", 1, 5, artifact="audit/x.json")
    outcome.cells = [
        AuditedCell("c1", "t", "q1", 8, IDENTICAL, "a b", "a b"),
        AuditedCell("c2", "t", "q2", 4, CHANGED, "a b", "a c", "a [-b-] {+c+}"),
        AuditedCell("c3", "t", "q3", 2, CRASHED, "a b", None, error="OutOfMemoryError: CUDA out of memory"),
    ]
    print_outcome(outcome)
    assert capsys.readouterr().out.splitlines() == [
        "identical c1  t · q1  (batch 8 -> 1)",
        "changed   c2  t · q2  (batch 4 -> 1)",
        "    a [-b-] {+c+}",
        "crashed   c3  t · q3  (batch 2 -> 1)",
        "    OutOfMemoryError: CUDA out of memory",
        "audit of run1: 1 of 3 answers changed, 1 identical, 1 crashed (batch size 1)",
        "recorded: pov.batch_sensitive on each audited cell; audit/x.json on the execution",
    ]


def test_an_unknown_run_exits_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from runner.tracking import make_client

    make_client(uri)  # an empty store
    assert cli(["audit", "0123456789abcdef", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "0123456789abcdef" in err and "Traceback" not in err
