"""`pov view` in real headless Chromium (driven by Playwright), on the page of a real-model run.

One small quickstart (the real SmolLM2, 4 cells, one crashed by an injected fault) is run with `pov run`,
then run again with `pov rerun`; `pov view --run A --compare B` writes the page, and the browser opens it
from file:// with the network off: it filters to one template, opens a cell and finds its three stages and
its checks, switches to compare mode and finds every answer identical, and shows the crashed cell's cause.
What the page must show is read straight from MLflow here (child-run tags, stored files), never from the
page's own data. The same run's traces are read back with MLflow's client (span types, documents, cell ids).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from headless import CHROMIUM, CHROMIUM_ARGS

from runner.cli import main as cli
from runner.tracking import Artifacts, Kind, Status, Tags, Traces, tag_is

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per download is noise
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium"),
]
ROOT = Path(__file__).resolve().parent.parent
POV = str(Path(sys.executable).parent / "pov")
K = (10, 6, 3)  # the quickstart's k schedule
CRASHED = {"template": "brief_opinion", "question": "brics-growth-drivers"}
SPEC = f"""\
name: viewtest
extends: {ROOT / "experiments" / "quickstart.yaml"}
corpus: {{path: brics}}
generation: {{max_new_tokens: 24, temperature: 0.0, seed: 0, batch_size: 4}}
matrix:
  template: [brief_summary_opinion, brief_opinion]
  persona: [professor]
  pov_set: [security]
  question: [japan-alliances, brics-growth-drivers]
  exclude: []
faults:
  - {{cause: exception, match: {{template: {CRASHED["template"]}, question: {CRASHED["question"]}}}}}
tracking: {{experiment: viewtest}}
"""


def pov(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db"
    )
    done = subprocess.run([POV, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pov {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


class Store:
    """The two executions as MLflow holds them, read here with MLflow's own client."""

    def __init__(self, tmp: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.tmp = tmp
        self.client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        eid = self.client.get_experiment_by_name("viewtest").experiment_id
        self.experiment_id = eid
        runs = self.client.search_runs(
            [eid], tag_is(Tags.KIND, Kind.EXECUTION), order_by=["attributes.start_time ASC"]
        )
        ids = [r.info.run_id for r in runs]
        self.original, self.rerun = ids[0], ids[-1]

    def cells(self, run_id: str) -> dict[str, Any]:
        """Per cell id: its child run (tags, params)."""
        kids = self.client.search_runs([self.experiment_id], tag_is(Tags.PARENT_RUN_ID, run_id))
        return {k.data.tags[Tags.CELL_ID]: k for k in kids}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Store:
    tmp = tmp_path_factory.mktemp("view")
    shutil.copytree(ROOT / "data" / "brics", tmp / "brics")
    (tmp / "spec.yaml").write_text(SPEC)
    pov(tmp, "run", "spec.yaml", "--quiet")
    s = Store(tmp)
    pov(tmp, "rerun", s.original, "--quiet")
    s = Store(tmp)
    # The pages are written in this process (a `pov` process costs its imports again); `pov view` is run as
    # a command in tests/test_viewer.py.
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    try:
        assert cli(["view", "--run", s.original, "--compare", s.rerun, "--out", str(tmp / "page")]) == 0
        assert cli(["report", "--run", s.original, "--out", str(tmp / "report"), "--no-log"]) == 0
    finally:
        mp.undo()
    return s


class Browser:
    """One headless Chromium; every page it opens is offline and records each request it makes."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.requests: list[str] = []
        self.errors: list[str] = []

    def open(self, url: str, width: int = 1400, viewer: bool = True) -> Any:
        context = self.browser.new_context(viewport={"width": width, "height": 1000})
        context.set_offline(True)
        page = context.new_page()
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        if viewer:
            page.wait_for_selector("body[data-ready]")
        return page

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    pytest.importorskip("playwright", reason="pip install -e '.[dev]' (Playwright drives the browser)")
    b = Browser()
    try:
        yield b
    finally:
        b.close()
    # Every request any page made was for a file: nothing reached for the network, and nothing failed.
    assert b.requests and all(u.startswith("file://") for u in b.requests), b.requests
    assert b.errors == []


def shown_count(page: Any) -> int:
    return int(page.get_attribute("main .count", "data-count"))


def test_grid_filters_to_one_template_and_opens_a_cell(store: Store, browser: Browser) -> None:
    page = browser.open((store.tmp / "page" / "view.html").as_uri())
    kids = store.cells(store.original)
    assert shown_count(page) == len(kids) == 4
    page.select_option("select[name=template]", "brief_summary_opinion")
    assert "template=brief_summary_opinion" in page.url
    assert shown_count(page) == 2
    heads = page.locator("table.grid thead th").all_inner_texts()[1:]
    assert heads and all(h.startswith("brief_summary_opinion") for h in heads)
    page.locator(".card.finished").first.click()
    panel = page.locator(".panel")
    panel.wait_for()
    cell_id = page.url.split("cell=")[1].split("&")[0]
    kid = kids[cell_id]
    assert kid.data.params["template"] == "brief_summary_opinion"
    for stage, k in zip(("vector", "query", "pov"), K, strict=True):
        assert panel.locator(f"table.stage[data-stage={stage}] tr.chunk").count() == k, stage
    statements = json.loads(
        (
            Path(store.client.download_artifacts(kid.info.run_id, Artifacts.CONTEXT, str(store.tmp / "dl")))
        ).read_text()
    )["stages"][2]["statements"]
    assert panel.locator("table.stage[data-stage=pov] thead th.sim").count() == len(statements) > 0
    # The checks the tracker recorded for this cell, each with its verdict.
    recorded = Tags.checks(kid.data.tags)
    assert len(recorded) >= 4
    rows = dict(
        zip(
            panel.locator(".checks-table td:first-child").all_inner_texts(),
            panel.locator(".checks-table td:last-child").all_inner_texts(),
            strict=True,
        )
    )
    assert rows == recorded
    answer = Path(store.client.download_artifacts(kid.info.run_id, Artifacts.OUTPUT, str(store.tmp / "dl2")))
    last_words = " ".join(answer.read_text().split()[-4:])
    assert last_words in " ".join(panel.locator(".answer").inner_text().split())
    page.keyboard.press("Escape")
    assert page.locator(".panel").count() == 0


def test_compare_mode_finds_the_rerun_identical(store: Store, browser: Browser) -> None:
    page = browser.open((store.tmp / "page" / "view.html").as_uri())
    page.click("button[data-mode=compare]")
    assert shown_count(page) == 4
    assert page.locator("td[data-answer]").all_inner_texts() == ["identical"] * 4
    assert page.locator("td[data-ranking]").all_inner_texts() == ["identical"] * 4
    assert "only in" in page.locator(".summary").inner_text()
    page.locator("tr.pair").first.click()
    assert page.locator(".panel [data-answer]").inner_text() == "identical"
    assert page.locator(".panel .ranking-changes .verdict.identical").count() == 3


def test_a_crashed_cell_shows_its_cause(store: Store, browser: Browser) -> None:
    page = browser.open((store.tmp / "page" / "view.html").as_uri())
    page.check("input[name=crashed]")
    assert shown_count(page) == 1
    [crashed] = [
        k for k in store.cells(store.original).values() if k.data.tags[Tags.STATUS] == Status.CRASHED
    ]
    assert {a: crashed.data.params[a] for a in CRASHED} == CRASHED
    card = page.locator(".card.crashed")
    assert card.locator(".cause").inner_text() == crashed.data.tags[Tags.CAUSE] == "exception"
    assert crashed.data.tags[Tags.ERROR].splitlines()[0] in card.inner_text()
    card.click()
    assert "injected fault" in page.locator(".panel .stderr").inner_text()


def test_report_rows_link_to_the_viewer_filtered_on_them(store: Store, browser: Browser) -> None:
    assert (store.tmp / "report" / "view.html").is_file()
    page = browser.open((store.tmp / "report" / "report.html").as_uri(), viewer=False)
    link = page.locator("a.view[href*='template=brief_opinion']").first
    link.click()
    page.wait_for_selector("body[data-ready]")
    assert page.url.endswith("view.html#template=brief_opinion")
    assert shown_count(page) == 2


def test_the_run_s_traces_read_back_with_mlflow(store: Store) -> None:
    """A real run's traces (sqlite store): one per cell, linked to its child run, with the three ranked
    stages as MLflow documents and the prompt as sent."""
    from mlflow.entities import SpanType

    kids = store.cells(store.original)
    for cell_id, kid in kids.items():
        [trace] = store.client.search_traces(locations=[store.experiment_id], run_id=kid.info.run_id)
        assert trace.info.tags[Tags.CELL_ID] == cell_id
        spans = {s.name: s for s in trace.data.spans}
        assert [spans[n].span_type for n in (Traces.VECTOR, Traces.QUERY, Traces.POV)] == [
            SpanType.RETRIEVER
        ] * 3
        assert spans[Traces.GENERATE].span_type == SpanType.LLM
        assert [len(spans[n].outputs) for n in (Traces.VECTOR, Traces.QUERY, Traces.POV)] == list(K)
        assert all(
            d["page_content"] and d["metadata"][Traces.DOC_URI] == d["id"] for d in spans[Traces.POV].outputs
        )
        prompt = Path(
            store.client.download_artifacts(kid.info.run_id, Artifacts.PROMPT, str(store.tmp / cell_id))
        )
        assert spans[Traces.GENERATE].inputs["messages"][0]["content"] == prompt.read_text()
