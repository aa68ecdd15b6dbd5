"""`pov report` against a real MLflow sqlite store holding executions written by the real tracker.

The numbers the report prints and writes (report.json) are checked against counts made here straight from
MlflowClient.search_runs: first on executions logged here through MlflowTracker (plus superseded, KILLED and
unfinished child runs the report must leave out), then on a real `pov ingest` + `pov run` of a small spec
whose complex template is given more injected faults than the simple one. Tag names come from
runner.tracking's schema, so the tests follow a renamed tag and catch a reader that misreads one.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.cli import main as cli
from runner.report.stats import bin_edges, bin_index, percentile, wilson
from runner.run import CellResult
from runner.spec import Cell, Experiment, load_spec
from runner.tracking import (
    CHECK_FAIL,
    CHECK_PASS,
    TRUE,
    Kind,
    Metrics,
    MlflowTracker,
    Status,
    Tags,
    make_client,
    search_all,
    tag_is,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = {"summary_opinion": 0.45, "opinion_only": 0.1}
QUESTIONS = ("q1", "q2")


# ---- stats ----------------------------------------------------------------------------------------------


def test_wilson_textbook_values():
    # 0/10: upper bound z²/(n+z²); 5/10: 0.5 ± 0.2634 (Wilson 1927; e.g. Newcombe 1998, table I).
    p, lo, hi = wilson(0, 10)
    assert (p, lo) == (0.0, 0.0) and hi == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    p, lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson(10, 10)[2] == 1.0
    assert math.isnan(wilson(0, 0)[0])
    with pytest.raises(ValueError):
        wilson(3, 2)


@given(st.integers(1, 5000), st.data())
def test_wilson_brackets_the_rate(n, data):
    k = data.draw(st.integers(0, n))
    p, lo, hi = wilson(k, n)
    assert 0.0 <= lo <= p <= hi <= 1.0
    assert wilson(k * 4, n * 4)[2] - wilson(k * 4, n * 4)[1] < hi - lo  # more cells, narrower interval


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60), st.floats(0, 100))
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=200))
def test_every_value_lands_in_one_bin(values):
    edges = bin_edges(values)
    assert 2 <= len(edges) <= 6 and edges == sorted(edges)
    counts = Counter(bin_index(v, edges) for v in values)
    assert sum(counts.values()) == len(values)
    assert all(0 <= i < len(edges) - 1 for i in counts)


# ---- a store with executions written by MlflowTracker ----------------------------------------------------

MANIFEST = {
    "git": {"commit": "0123456789abcdef", "branch": "main", "dirty": False},
    "gpu": {"name": "none"},
    "versions": {},
    "corpus": {"fingerprint": "none"},
}


def demo_spec() -> Experiment:
    return load_spec(REPO / "experiments" / "tiny.yaml", ["name=demo"])


def cell_result(cell: Cell, rng: random.Random, cause: str | None) -> CellResult:
    """A finished cell (cause None) or a crashed one, with a prompt length that grows with the template."""
    tokens = 500 + 400 * (cell.template == "summary_opinion") + rng.randint(0, 300)
    metrics = {Metrics.COMPLEXITY_PROMPT_TOKENS: float(tokens), "complexity_sections": 1.0}
    tags = {}
    if cause is None:
        metrics |= {
            Metrics.LATENCY_S: rng.uniform(0.5, 2.0),
            Metrics.PROMPT_TOKENS: float(tokens),
            "new_tokens": 16.0,
            Metrics.TOKENS_PER_S: 30.0,
            Metrics.GPU_PEAK_ALLOCATED_MB: 100.0 + tokens / 10,
        }
        tags = {Tags.check("sections"): rng.choice([CHECK_PASS, CHECK_FAIL]), Tags.check("idk"): CHECK_PASS}
    return CellResult(
        cell=cell,
        status=Status.FINISHED if cause is None else Status.CRASHED,
        prompt=f"prompt of {cell.id}",
        context={"stages": []},
        output="an answer" if cause is None else None,
        cause=cause,
        error=f"{cause} in {cell.id}" if cause else None,
        metrics=metrics,
        tags=tags,
        started_at=1_700_000_000.0,
        ended_at=1_700_000_001.0,
    )


def log_execution(
    uri: str,
    exp: Experiment,
    seed: int,
    rates: dict[str, float],
    experiment: str = "report-test",
    questions: tuple[str, ...] = ("q1", "q2", "q3"),
) -> str:
    """One execution of `exp` through MlflowTracker, one cell per axis combination (crashing at the template's
    rate), plus child runs the report must not count: a crash superseded by its retry (and restored from
    MLflow's trash, as `mlflow runs restore` would), a duplicate child KILLED from outside, and one another
    tool began and left RUNNING without a status."""
    rng = random.Random(seed)
    client = make_client(uri)
    if client.get_experiment_by_name(experiment) is None:  # its artifacts beside the store, not in the cwd
        client.create_experiment(
            experiment, Path(uri.removeprefix("sqlite:///")).parent.joinpath("mlruns").as_uri()
        )
    cells = [
        Cell(
            f"{seed}-{template}-{model}-{persona}-{'-'.join(map(str, k))}-gs-{q}",
            model,
            template,
            persona,
            "gs",
            k,
            q,
        )
        for template in rates
        for model in ("tiny-a", "tiny-b")
        for persona in ("professor", "assistant")
        for k in ((15, 10, 5), (15, 10, 3))
        for q in questions
    ]
    retried = [c for i, c in enumerate(cells, 1) if i % 11 == 0]
    killed = [c for i, c in enumerate(cells, 1) if i % 13 == 0]
    first = MlflowTracker(uri, experiment)
    first.start(exp, cells, MANIFEST, fresh=True)
    first.log([cell_result(c, rng, "timeout") for c in retried])
    first.finish({})  # interrupted: the other cells are still to do
    second = MlflowTracker(uri, experiment)
    assert second.start(exp, cells, MANIFEST, retry_crashed=True) == set() and second.run_id == first.run_id
    for c in cells:
        if c in killed:
            second.log([cell_result(c, rng, "killed")])  # a second child of the cell, KILLED below
        crashed = rng.random() < rates[c.template]
        second.log([cell_result(c, rng, rng.choice(["exception", "segfault"]) if crashed else None)])
    second.finish({})
    pid, eid = second.run_id, second.experiment_id
    assert pid is not None and eid is not None
    for run in search_all(client, [eid], tag_is(Tags.PARENT_RUN_ID, pid), deleted_too=True):
        if run.info.lifecycle_stage == "deleted":
            client.restore_run(run.info.run_id)
        elif run.data.tags.get(Tags.CAUSE) == "killed":
            client.set_terminated(run.info.run_id, "KILLED")
    client.create_run(eid, tags={Tags.PARENT_RUN_ID: pid, Tags.KIND: Kind.CELL, Tags.CELL_ID: cells[4].id})
    return pid


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlstore")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    a = log_execution(uri, demo_spec(), 1, TEMPLATES, questions=QUESTIONS)
    b = log_execution(
        uri, demo_spec(), 2, {"summary_opinion": 0.15, "opinion_only": 0.05}, questions=QUESTIONS
    )
    return {"uri": uri, "client": client, "a": a, "b": b, "root": root}


@pytest.fixture
def env(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(tmp_path)
    return store


def children(client: Any, parent_id: str) -> list[Any]:
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], tag_is(Tags.PARENT_RUN_ID, parent_id), max_results=5000
    )


def counted(runs: list[Any]) -> list[Any]:
    """The child runs that record a cell: not superseded, not KILLED, with a status."""
    return [
        r
        for r in runs
        if r.data.tags.get(Tags.SUPERSEDED) != TRUE
        and r.info.status != "KILLED"
        and r.data.tags.get(Tags.STATUS) in (Status.FINISHED, Status.CRASHED)
    ]


def hand_count(client: Any, parent_id: str) -> tuple[Counter[str], Counter[str], int]:
    """Crashed and total cells per template, counted straight from the child runs."""
    runs = children(client, parent_id)
    crashed, total = Counter(), Counter()
    for r in counted(runs):
        total[r.data.params["template"]] += 1
        crashed[r.data.params["template"]] += r.data.tags[Tags.STATUS] == Status.CRASHED
    return crashed, total, len(runs)


def report_json(out: Path, index: int = 0) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())["executions"][index]


def test_report_matches_a_hand_count(env: dict[str, Any], capsys: pytest.CaptureFixture[str]):
    out = Path("out")
    assert cli(["report", "--run", env["a"], "--out", str(out), "--no-log"]) == 0
    data = report_json(out)
    crashed, total, _ = hand_count(env["client"], env["a"])
    rows = {r["value"]: r for r in data["crash_rate"]["template"]}
    assert {t: (r["k"], r["n"]) for t, r in rows.items()} == {t: (crashed[t], total[t]) for t in total}
    cells = 2 * 2 * 2 * 2 * len(QUESTIONS)  # templates x models x personas x k x questions, as logged
    assert data["overall"]["n"] == sum(total.values()) == cells
    for t, r in rows.items():
        assert r["rate"] == pytest.approx(crashed[t] / total[t])
        assert r["lo"] <= r["rate"] <= r["hi"]
    assert rows["summary_opinion"]["rate"] > rows["opinion_only"]["rate"]
    assert data["ignored"] == {"superseded": cells // 11, "killed": cells // 13, "unfinished": 1}
    # Every axis and the prompt-token bins count each cell once.
    for axis, table in data["crash_rate"].items():
        assert sum(r["n"] for r in table) == cells, axis
        assert sum(r["k"] for r in table) == sum(crashed.values()), axis
    printed = capsys.readouterr().out
    so = rows["summary_opinion"]
    assert f"{so['k']}/{so['n']}" in printed and "crash rate by template" in printed


def test_report_html_shows_intervals_and_charts(env: dict[str, Any]):
    out = Path("html")
    assert cli(["report", "--run", env["a"], "--out", str(out), "--no-log"]) == 0
    page = (out / "report.html").read_text()
    so = next(r for r in report_json(out)["crash_rate"]["template"] if r["value"] == "summary_opinion")
    assert f"{100 * so['lo']:.1f}% – {100 * so['hi']:.1f}%" in page
    imgs = __import__("re").findall(r'<img src="([^"]+)"', page)
    assert {
        "crash_template.png",
        "crash_model.png",
        "crash_persona.png",
        "crash_k.png",
        "crash_prompt_tokens.png",
        "crash_causes.png",
        "latency.png",
        "checks.png",
    } <= set(imgs)
    for name in imgs:
        assert "/" not in name and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in page.lower().replace("http-equiv", "")  # nothing fetched from elsewhere


def test_causes_latency_and_checks(env: dict[str, Any]):
    out = Path("o")
    assert cli(["report", "--run", env["a"], "--out", str(out), "--no-log"]) == 0
    data = report_json(out)
    live = counted(children(env["client"], env["a"]))
    causes = Counter(r.data.tags[Tags.CAUSE] for r in live if r.data.tags[Tags.STATUS] == Status.CRASHED)
    assert data["crash_causes"]["all"] == dict(causes)
    finished = [r for r in live if r.data.tags[Tags.STATUS] == Status.FINISHED]
    lat = sorted(r.data.metrics[Metrics.LATENCY_S] for r in finished if r.data.params["model"] == "tiny-a")
    row = next(r for r in data["performance"]["model"] if r["value"] == "tiny-a")
    assert row["n"] == len(lat) and row["latency_p50"] == pytest.approx(float(np.median(lat)))
    passed = sum(r.data.tags[Tags.check("sections")] == CHECK_PASS for r in finished)
    check = next(r for r in data["checks"] if r["check"] == "sections")
    assert (check["k"], check["n"]) == (passed, len(finished))


def test_compare_puts_two_executions_side_by_side(env: dict[str, Any]):
    out = Path("cmp")
    assert cli(["report", "--run", env["a"], "--compare", env["b"], "--out", str(out), "--no-log"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert [e["run_id"] for e in data["executions"]] == [env["a"], env["b"]]
    for i, run in enumerate((env["a"], env["b"])):
        crashed, total, _ = hand_count(env["client"], run)
        rows = {r["value"]: (r["k"], r["n"]) for r in data["executions"][i]["crash_rate"]["template"]}
        assert rows == {t: (crashed[t], total[t]) for t in total}
    # Shared prompt-token bins, so the two columns line up.
    assert [r["value"] for r in data["executions"][0]["crash_rate"]["prompt_tokens"]] == [
        r["value"] for r in data["executions"][1]["crash_rate"]["prompt_tokens"]
    ]
    page = (out / "report.html").read_text()
    assert env["a"][:8] in page and env["b"][:8] in page


def test_spec_picks_its_latest_execution_and_logs_the_artifact(
    store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: demo-spec\nextends: {REPO / 'experiments' / 'tiny.yaml'}\n"
        f"tracking: {{uri: '{store['uri']}'}}\n"
    )
    exp = load_spec(spec)
    other = load_spec(spec, ["generation.max_new_tokens=7"])
    assert other.spec.name == exp.spec.name and other.spec_hash != exp.spec_hash
    old = log_execution(store["uri"], exp, 3, TEMPLATES, "spec-exp", ("q1",))
    new = log_execution(store["uri"], exp, 4, TEMPLATES, "spec-exp", ("q1",))
    log_execution(store["uri"], other, 5, TEMPLATES, "spec-exp", ("q1",))  # newest, other hash
    assert cli(["report", str(spec)]) == 0
    out = tmp_path / "report" / new
    assert (out / "report.html").is_file() and not (tmp_path / "report" / old).exists()
    logged = {f.path for f in store["client"].list_artifacts(new, "report")}
    assert {"report/report.html", "report/crash_template.png"} <= logged


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "either SPEC or --run"),
        (["--run", "0" * 32], "no MLflow run"),
        (["--run", "CELL"], "not a pov execution"),
        (["--run", "A", "--compare", "A"], "same run"),
        (["--run", "A", "--out", "a-file"], "is a file"),
    ],
)
def test_bad_input_exits_2(
    env: dict[str, Any], argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
):
    cell = children(env["client"], env["a"])[0]
    argv = [{"CELL": cell.info.run_id, "A": env["a"]}.get(a, a) for a in argv]
    Path("a-file").write_text("not a folder")
    assert cli(["report", *argv]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in Path().iterdir()) == ["a-file"]  # nothing written


def test_missing_store_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli(["report", "--run", "abc"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- end to end: a real `pov run` with injected faults --------------------------------------------------------

E2E_SPEC = """name: report-e2e
extends: {base}
corpus: {{persist_dir: {tmp}/chroma, collection: brics-report-e2e}}
models:
  tiny: {{backend: transformers, name: {model}, max_seq_length: 512, device: cpu}}
generation: {{max_new_tokens: 4, temperature: 0.0, seed: 0, batch_size: 8}}
matrix:
  model: [tiny]
  template: [summary_opinion, opinion_only]
  persona: [professor]
  pov_set: [global_south]
  k: [[6, 4, 2]]
  question: all
limits: {{cell_timeout_s: 60}}
tracking: {{experiment: report-e2e, uri: "sqlite:///{tmp}/mlflow.db"}}
faults:
  - {{cause: segfault, match: {{template: summary_opinion}}, rate: 0.2}}
  - {{cause: exception, match: {{template: summary_opinion}}, rate: 0.5}}
  - {{cause: exception, match: {{template: opinion_only}}, rate: 0.1}}
"""


@pytest.mark.slow
def test_real_run_with_faults(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        E2E_SPEC.format(base=REPO / "experiments" / "base.yaml", tmp=tmp_path, model=tiny_model_dir)
    )
    assert cli(["ingest", str(spec)]) == 0
    assert cli(["run", str(spec), "--quiet"]) == 0
    assert cli(["report", str(spec)]) == 0
    printed = capsys.readouterr().out

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("report-e2e").experiment_id], tag_is(Tags.KIND, Kind.EXECUTION)
    )
    run_id = parent.info.run_id
    crashed, total, _ = hand_count(client, run_id)
    assert sum(total.values()) == 20  # 2 templates x 10 questions
    out = tmp_path / "report" / run_id
    data = report_json(out)
    rows = {r["value"]: r for r in data["crash_rate"]["template"]}
    assert {t: (r["k"], r["n"]) for t, r in rows.items()} == {t: (crashed[t], total[t]) for t in total}
    assert rows["summary_opinion"]["rate"] > rows["opinion_only"]["rate"]
    page = (out / "report.html").read_text()
    for r in rows.values():
        assert f"{100 * r['lo']:.1f}% – {100 * r['hi']:.1f}%" in page  # the interval is shown
        assert f"{r['k']}/{r['n']}" in printed
    # Crash causes are the injected ones, counted as MLflow has them.
    runs = children(client, run_id)
    causes = Counter(r.data.tags[Tags.CAUSE] for r in runs if r.data.tags.get(Tags.STATUS) == Status.CRASHED)
    assert data["crash_causes"]["all"] == dict(causes) and set(causes) <= {"segfault", "exception"}
    # Prompt complexity reached the report: every cell, crashed or not, sits in a prompt-token bin.
    assert sum(r["n"] for r in data["crash_rate"]["prompt_tokens"] if r["value"] != "unknown") == 20
    # The finished cells carry the output checks, and the report went back to the parent run.
    assert {"sections", "words", "idk", "degenerate"} <= {r["check"] for r in data["checks"]}
    assert "report/report.html" in {f.path for f in client.list_artifacts(run_id, "report")}
    # Every cell's retrieval metrics reached MLflow and the retrieval table: 10 retrievals (one per question),
    # each counted once however many templates share it; one POV set, so no stance specificity.
    assert all(Metrics.RELEVANCE_KEPT in r.data.metrics for r in counted(runs))
    assert [(r["value"], r["n"]) for r in data["retrieval"]] == [("l2 · all", 10), ("l2 · global_south", 10)]
    assert math.isnan(data["retrieval"][0][Metrics.STANCE_SPECIFICITY] or math.nan)


# ---- what a latency measures ------------------------------------------------------------------------------


def test_the_report_says_whether_latency_is_per_cell_or_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """tiny-a's backend timed each cell (latency_per_cell 1); tiny-b's could only time batches (0); an
    execution recorded before cells were timed carries no latency_per_cell at all and is per batch too."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = demo_spec()

    def execution(timed: dict[str, float | None]) -> str:
        cells = [
            Cell(f"{m}-{t}-{q}", m, t, "professor", "gs", (15, 10, 5), q)
            for m in timed
            for t in TEMPLATES
            for q in QUESTIONS
        ]
        tracker = MlflowTracker(uri, "latency-scope")
        tracker.start(exp, cells, MANIFEST, fresh=True)
        rng = random.Random(7)
        results = [cell_result(c, rng, None) for c in cells]
        for r in results:
            flag = timed[r.cell.model]
            if flag is not None:
                r.metrics["latency_per_cell"] = flag
        tracker.log(results)
        tracker.finish({})
        assert tracker.run_id is not None
        return tracker.run_id

    per_cell, mixed, old = (
        execution({"tiny-a": 1.0, "tiny-b": 1.0}),
        execution({"tiny-a": 1.0, "tiny-b": 0.0}),
        execution({"tiny-a": None, "tiny-b": None}),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pages = {}
    for name, run in (("per_cell", per_cell), ("mixed", mixed), ("old", old)):
        assert cli(["report", "--run", run, "--out", name, "--no-log"]) == 0
        pages[name] = (Path(name) / "report.html").read_text()
        data = report_json(Path(name))
        scopes = {r["value"]: r["latency_scope"] for r in data["performance"]["model"]}
        if name == "per_cell":
            assert data["latency_scope"] == "per cell" and set(scopes.values()) == {"per cell"}
        elif name == "mixed":
            assert scopes == {"tiny-a": "per cell", "tiny-b": "per batch (backend cannot time cells)"}
            assert data["latency_scope"] == "per cell, or per batch where the backend cannot time cells"
        else:
            assert data["latency_scope"] == "per batch (backend cannot time cells)"
    assert "latency p50 (s), per cell" in pages["per_cell"] and "Latency: per cell." in pages["per_cell"]
    assert "latency p50 (s), per batch (backend cannot time cells)" in pages["old"]
    assert "<th>latency is</th>" in pages["mixed"]
    assert "<td>per batch (backend cannot time cells)</td>" in pages["mixed"]
    capsys.readouterr()
