"""The report's retrieval table: per-cell retrieval metrics written by the real tracker into a real MLflow store,
read back and averaged by scoring method and POV set, each retrieval once; checked against the values logged."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from runner.cli import main as cli
from runner.run import CellResult
from runner.spec import Cell, load_spec
from runner.tracking import Metrics, MlflowTracker, Params, Status, make_client

REPO = Path(__file__).resolve().parents[1]
MANIFEST = {"git": {}, "gpu": {"name": "none"}, "versions": {}, "corpus": {"fingerprint": "none"}}


def logged_metrics(pov_set: str, method: str, question: str) -> dict[str, float]:
    """What retrieval measured for one (POV set, method, question): numbers made up to be told apart."""
    q = int(question[1:])
    return {
        Metrics.RELEVANCE_KEPT: {"l2": 0.2, "contrast": 0.4}[method] + 0.2 * q,
        Metrics.BEST_MATCH_RANK: float({"l2": 6, "contrast": 2}[method] + q),
        Metrics.STANCE_SPECIFICITY: {"gs": 0.3, "sec": 0.5}[pov_set] + (0.4 if method == "contrast" else 0.0),
        "stage1_boilerplate_share": 0.1 * q,
        "stage3_boilerplate_share": 0.0,
        "stage1_truncated": float(q),
        "stage3_truncated": 0.0,
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("retrieval-report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp = load_spec(REPO / "experiments" / "quickstart.yaml", ["name=retrieval-demo"])
    # Two models share each retrieval: the table must count it once, not twice.
    cells = [
        Cell(f"{m}-{p}-{s}-{q}", m, "summary_opinion", "professor", p, (15, 10, 3), q, s)
        for m in ("tiny-a", "tiny-b")
        for p in ("gs", "sec")
        for s in ("l2", "contrast")
        for q in ("q1", "q2")
    ]
    client = make_client(uri)  # artifacts beside the store, not in the working directory
    client.create_experiment("retrieval-demo", (root / "mlruns").as_uri())
    tracker = MlflowTracker(uri, "retrieval-demo")
    tracker.start(exp, cells, MANIFEST, fresh=True)
    tracker.log(
        [
            CellResult(
                cell=c,
                status=Status.FINISHED,
                prompt="p",
                context={"stages": [], "metrics": logged_metrics(c.pov_set, c.pov_score, c.question)},
                output="o",
                metrics={Metrics.PROMPT_TOKENS: 10.0},
                started_at=1_700_000_000.0,
                ended_at=1_700_000_001.0,
            )
            for c in cells
        ]
    )
    tracker.finish({})
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert cli(["report", "--run", str(tracker.run_id), "--out", str(out), "--no-log"]) == 0
    data = json.loads((out / "report.json").read_text())["executions"][0]
    return {"rows": {r["value"]: r for r in data["retrieval"]}, "html": (out / "report.html").read_text()}


def test_rows_average_each_retrieval_once(report: dict[str, Any]) -> None:
    rows = report["rows"]
    assert list(rows) == [
        "contrast · all",
        "contrast · gs",
        "contrast · sec",
        "l2 · all",
        "l2 · gs",
        "l2 · sec",
    ]
    for method in ("l2", "contrast"):
        for pov_set in ("gs", "sec", "all"):
            sets = ("gs", "sec") if pov_set == "all" else (pov_set,)
            want = [logged_metrics(p, method, q) for p in sets for q in ("q1", "q2")]
            row = rows[f"{method} · {pov_set}"]
            assert row["n"] == len(want)
            for key in (Metrics.RELEVANCE_KEPT, Metrics.STANCE_SPECIFICITY, "stage1_truncated"):
                assert row[key] == pytest.approx(statistics.fmean(w[key] for w in want))
            kept = [w[Metrics.BEST_MATCH_RANK] <= 3 for w in want]
            assert row["best_match_kept"] == pytest.approx(sum(kept) / len(kept))


def test_the_page_shows_the_table(report: dict[str, Any]) -> None:
    page = report["html"]
    assert "<h2>Retrieval</h2>" in page and "contrast · sec" in page and "stance specificity" in page


def test_the_rerank_model_is_a_param_of_the_execution(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = make_client(uri)
    client.create_experiment("rerank-param", (tmp_path / "mlruns").as_uri())
    got = {}
    for extra in ([], ["query_reranker={provider: cohere, model: rerank-v3.5}"]):
        exp = load_spec(REPO / "experiments" / "quickstart.yaml", ["name=rerank-param", *extra])
        tracker = MlflowTracker(uri, "rerank-param")
        tracker.start(exp, [], MANIFEST, fresh=True)
        got[bool(extra)] = client.get_run(str(tracker.run_id)).data.params[Params.QUERY_RERANKER]
        tracker.finish({})
    assert got == {False: "none", True: "cohere:rerank-v3.5"}
