"""Each cell as an MLflow trace, read back with MLflow's own client from a real sqlite store: the span types,
the retrieved documents in MLflow's retriever shape, the LLM messages, the cell id and axes, the link to the
cell's child run; a crash as an ERROR trace; `tracking.traces: false`; a redone cell's old trace marked.

Names come from runner.tracking.schema, span types and document fields from MLflow itself, so a renamed
constant or a document MLflow cannot read fails here. (The same against a real `mlflow server`:
tests/test_mlflow_server.py; from a real model run: tests/test_viewer_browser.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.run import CellResult
from runner.spec import Cell, Experiment, expand, load_spec
from runner.tracking import MlflowTracker, Status, Tags, Traces

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = {"git": {}, "gpu": {}, "versions": {}, "corpus": {}}
STATEMENTS = ["Alliances are insurance.", "Trade follows the flag."]


def cell_result(cell: Cell, n: int, crashed: bool = False) -> CellResult:
    """A cell whose three stages re-rank six chunks (stage 2 reverses stage 1, stage 3 picks the odd ones)."""
    k1, k2, k3 = cell.k
    ids = [f"{cell.question}-c{i}" for i in range(k1)]
    texts = {i: f"Chunk {i} says something about {cell.question}." for i in ids}
    s2 = list(reversed(ids))[:k2]
    s3 = [i for i in s2 if int(i.rsplit("c", 1)[1]) % 2][:k3]
    sims = [[0.1 * (j + 1), 0.05 * (j + 2)] for j in range(len(s3))]
    stages = [
        {
            "name": "vector",
            "ids": ids,
            "texts": [texts[i] for i in ids],
            "scores": [0.9 - j / 50 for j in range(k1)],
        },
        {
            "name": "query",
            "ids": s2,
            "texts": [texts[i] for i in s2],
            "scores": [0.8 - j / 50 for j in range(len(s2))],
        },
        {
            "name": "pov",
            "ids": s3,
            "texts": [texts[i] for i in s3],
            "scores": [sum(x * x for x in row) ** 0.5 for row in sims],
            "statements": STATEMENTS,
            "similarities": sims,
        },
    ]
    return CellResult(
        cell=cell,
        status="crashed" if crashed else "finished",
        prompt=f"PROMPT {n} for {cell.id}",
        context={"question": cell.question, "pov_set": cell.pov_set, "k": list(cell.k), "stages": stages},
        output=None if crashed else f"## Opinion:\nANSWER {n}",
        cause="segfault" if crashed else None,
        error="worker died: SIGSEGV" if crashed else None,
        stderr_tail="Fatal Python error: Segmentation fault" if crashed else None,
        metrics={"latency_s": 1.5, "prompt_tokens": 100.0 + n, "new_tokens": 8.0, "tokens_per_s": 5.0},
        started_at=1_700_000_000.0 + n,
        ended_at=1_700_000_002.0 + n,
    )


@pytest.fixture(scope="module")
def exp() -> Experiment:
    return load_spec(ROOT / "experiments" / "tiny.yaml", ["matrix.k=[[6, 4, 2]]"])


@pytest.fixture()
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def log(
    uri: str, exp: Experiment, results: list[CellResult], cells: list[Cell] | None = None, **start: Any
) -> MlflowTracker:
    t = MlflowTracker(uri, "trace-test")
    t.start(exp, cells or [r.cell for r in results], MANIFEST, **start)
    t.log(results)
    t.finish({})
    return t


def traces_of(uri: str, experiment_id: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    return list(MlflowClient(uri).search_traces(locations=[experiment_id], max_results=500))


def children(uri: str, parent: str, experiment_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(uri).search_runs([experiment_id], f"tags.`{Tags.PARENT_RUN_ID}` = '{parent}'")
    return {r.data.tags[Tags.CELL_ID]: r.info.run_id for r in runs}


def check_trace(trace: Any, r: CellResult, exp: Experiment, child_run: str, parent_run: str) -> None:
    """One cell's trace, against the CellResult it was logged from."""
    from mlflow.entities import SpanStatusCode, SpanType, TraceState

    info = trace.info
    assert info.tags[Tags.CELL_ID] == r.cell.id
    assert info.tags[Traces.CELL_RUN] == child_run and info.tags[Traces.EXECUTION] == parent_run
    for axis, value in r.cell.axes().items():
        assert info.tags[axis] == (r.cell.k_label if axis == "k" else str(value)), axis
    assert info.tags[Tags.STATUS] == r.status
    assert info.state == (TraceState.ERROR if r.status == Status.CRASHED else TraceState.OK)
    assert info.request_time == int(r.started_at * 1000)
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {Traces.NAME, Traces.VECTOR, Traces.QUERY, Traces.POV, Traces.GENERATE}
    root = spans[Traces.NAME]
    assert root.parent_id is None and root.span_type == SpanType.CHAIN
    assert root.inputs["question"] == exp.questions[r.cell.question].text
    for stage in r.context["stages"]:
        span = spans[Traces.STAGE_SPANS[stage["name"]]]
        assert span.span_type == SpanType.RETRIEVER and span.parent_id == root.span_id
        docs = span.outputs
        assert [d["id"] for d in docs] == stage["ids"]
        assert [d["page_content"] for d in docs] == stage["texts"]
        assert [d["metadata"][Traces.DOC_URI] for d in docs] == stage["ids"]
        assert [d["metadata"][Traces.SCORE] for d in docs] == pytest.approx(stage["scores"])
        assert [d["metadata"][Traces.RANK] for d in docs] == list(range(1, len(docs) + 1))
        assert span.get_attribute(Traces.K) == len(stage["ids"])
    s1, s2, s3 = (r.context["stages"][i]["ids"] for i in range(3))
    query_docs = spans[Traces.QUERY].outputs
    assert [d["metadata"][Traces.PREVIOUS_RANK] for d in query_docs] == [s1.index(i) + 1 for i in s2]
    pov_docs = spans[Traces.POV].outputs
    assert [d["metadata"][Traces.PREVIOUS_RANK] for d in pov_docs] == [s2.index(i) + 1 for i in s3]
    assert [d["metadata"][Traces.SIMILARITIES] for d in pov_docs] == r.context["stages"][2]["similarities"]
    assert spans[Traces.POV].get_attribute(Traces.STATEMENTS) == STATEMENTS
    llm = spans[Traces.GENERATE]
    assert llm.span_type == SpanType.LLM and llm.parent_id == root.span_id
    assert llm.inputs["messages"] == [{"role": "user", "content": r.prompt}]
    if r.status == Status.CRASHED:
        assert llm.status.status_code == SpanStatusCode.ERROR
        assert info.tags[Tags.CAUSE] == r.cause
        assert r.error in llm.get_attribute(Traces.ERROR) and r.stderr_tail in llm.get_attribute(Traces.ERROR)
    else:
        assert llm.outputs["choices"][0]["message"] == {"role": "assistant", "content": r.output}
        assert root.outputs["answer"] == r.output


def test_each_cell_is_a_trace_of_its_rag_flow_linked_to_its_child_run(exp: Experiment, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    cells = expand(exp)[:3]
    results = [cell_result(c, i, crashed=(i == 2)) for i, c in enumerate(cells)]
    t = log(uri, exp, results)
    assert t.experiment_id is not None and t.run_id is not None
    kids = children(uri, t.run_id, t.experiment_id)
    traces = traces_of(uri, t.experiment_id)
    assert len(traces) == 3
    by_cell = {tr.info.tags[Tags.CELL_ID]: tr for tr in traces}
    client = MlflowClient(uri)
    for r in results:
        check_trace(client.get_trace(by_cell[r.cell.id].info.trace_id), r, exp, kids[r.cell.id], t.run_id)
        # MLflow's own link: the child run's traces are this one.
        [linked] = client.search_traces(locations=[t.experiment_id], run_id=kids[r.cell.id])
        assert linked.info.trace_id == by_cell[r.cell.id].info.trace_id


def test_traces_false_records_child_runs_only(exp: Experiment, uri: str) -> None:
    quiet = load_spec(ROOT / "experiments" / "tiny.yaml", ["matrix.k=[[6, 4, 2]]", "tracking.traces=false"])
    assert quiet.spec_hash == exp.spec_hash  # where runs are recorded, not what they are
    cells = expand(quiet)[:2]
    t = log(uri, quiet, [cell_result(c, i) for i, c in enumerate(cells)])
    assert t.experiment_id is not None and t.run_id is not None
    assert len(children(uri, t.run_id, t.experiment_id)) == 2
    assert traces_of(uri, t.experiment_id) == []


def test_a_retried_crash_leaves_one_live_trace_per_cell(exp: Experiment, uri: str) -> None:
    cells = expand(exp)[:2]
    first = log(uri, exp, [cell_result(cells[0], 0), cell_result(cells[1], 1, crashed=True)])
    retried = log(uri, exp, [cell_result(cells[1], 5)], cells, retry_crashed=True)
    assert retried.run_id == first.run_id and first.experiment_id is not None
    traces = traces_of(uri, first.experiment_id)
    assert len(traces) == 3  # the crash's trace is kept, as its child run is
    live = [tr for tr in traces if tr.info.tags.get(Tags.SUPERSEDED) != "true"]
    assert sorted(tr.info.tags[Tags.CELL_ID] for tr in live) == sorted(c.id for c in cells)
    [old] = [tr for tr in traces if tr.info.tags.get(Tags.SUPERSEDED) == "true"]
    assert old.info.tags[Tags.CELL_ID] == cells[1].id and old.info.tags[Tags.STATUS] == Status.CRASHED


class Killed(BaseException):
    """Stands in for a kill: nothing after it runs."""


def test_a_kill_after_the_trace_leaves_one_live_trace_per_cell(
    exp: Experiment, uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after a batch's traces were written but before its child runs were set FINISHED: the next run
    supersedes those children, and with them their traces."""
    cells = expand(exp)[:2]
    t = MlflowTracker(uri, "trace-test")
    t.start(exp, cells, MANIFEST)

    def kill(*_: Any) -> None:
        raise Killed

    monkeypatch.setattr(t, "_close_cell", kill)
    with pytest.raises(Killed):
        t.log([cell_result(c, i) for i, c in enumerate(cells)])
    assert t.experiment_id is not None
    assert len(traces_of(uri, t.experiment_id)) == 2  # written, and their children left RUNNING
    again = log(uri, exp, [cell_result(c, i) for i, c in enumerate(cells)], cells)
    assert again.run_id == t.run_id
    traces = traces_of(uri, t.experiment_id)
    live = [tr for tr in traces if tr.info.tags.get(Tags.SUPERSEDED) != "true"]
    assert len(traces) == 4 and sorted(tr.info.tags[Tags.CELL_ID] for tr in live) == sorted(
        c.id for c in cells
    )
    assert {tr.info.tags[Traces.CELL_RUN] for tr in live} == set(
        children(uri, t.run_id or "", t.experiment_id).values()
    )
