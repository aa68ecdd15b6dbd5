"""`pov view` on executions logged here through the real tracker into a real sqlite store (no model runs):
bad input (an unknown run id, another tool's run, a run still in progress, a run with no finished cell),
what the page holds for an opened cell (rank moves, the chunks an answer reused), and `--serve`.
The in-progress and empty pages and an answer holding `</script>` are also opened in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_traces import cell_result
from test_viewer_browser import CHROMIUM, Browser

from runner.cli import main as cli
from runner.run import reused_spans
from runner.run.checks import copied_share
from runner.spec import Experiment, expand, load_spec
from runner.tracking import MlflowTracker

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = {"git": {}, "gpu": {}, "versions": {}, "corpus": {}}
HOSTILE = "</script><script>document.title='owned'</script><!-- & <b>bold</b>"
QUOTED = "The Global South is not asking to tear up the system, it is asking for a bigger say in running it."


def four_cells(exp: Experiment) -> list[Any]:
    """Two cells of each template, a summary_opinion one first."""
    every = expand(exp)
    so = [c for c in every if c.template == "summary_opinion"]
    oo = [c for c in every if c.template == "opinion_only"]
    return [so[0], oo[0], so[1], oo[1]]


def quoting(r: Any) -> Any:
    """`r` with its top POV chunk made one of text QUOTED (in every stage: a chunk id names one text) and an
    answer that quotes it whole."""
    top = r.context["stages"][2]["ids"][0]
    for stage in r.context["stages"]:
        stage["texts"] = [
            QUOTED if i == top else t for i, t in zip(stage["ids"], stage["texts"], strict=True)
        ]
        stage["ids"] = ["quoted" if i == top else i for i in stage["ids"]]
    r.output = f"## Context Summary:\nThe passages discuss BRICS.\n## Opinion:\nAs one puts it: {QUOTED}"
    return r


@pytest.fixture(scope="module")
def exp() -> Experiment:
    return load_spec(ROOT / "experiments" / "tiny.yaml", ["matrix.k=[[6, 4, 2]]"])


class Stored:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.runs: dict[str, str] = {}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, exp: Experiment) -> Stored:
    """Three executions: `done` (4 cells, one copying a chunk, one hostile), `running` (2 of 4 cells logged,
    never finished) and `empty` (started, nothing logged); and `other`, a run another tool made."""
    from mlflow.tracking import MlflowClient

    s = Stored(tmp_path_factory.mktemp("viewer"))
    mp = pytest.MonkeyPatch()
    mp.chdir(s.root)  # MLflow's default artifact root, ./mlruns, lands here
    cells = four_cells(exp)
    results = [cell_result(c, i) for i, c in enumerate(cells)]
    results[0] = quoting(results[0])
    results[1].output = HOSTILE
    # `edited`: the same cells but the last, one answer reworded.
    edited = [cell_result(c, i) for i, c in enumerate(cells[:3])]
    edited[0] = quoting(edited[0])
    edited[2].output = (results[2].output or "").replace("ANSWER", "A REWORDED ANSWER")
    runs = (
        ("done", results, True),
        ("running", results[:2], False),
        ("empty", [], False),
        ("edited", edited, True),
    )
    for name, logged, finish in runs:
        t = MlflowTracker(s.uri, f"view-{name}")
        t.start(exp, cells if name != "edited" else cells[:3], MANIFEST)
        t.log(logged)
        if finish:
            t.finish({})
        assert t.run_id is not None
        s.runs[name] = t.run_id
    client = MlflowClient(s.uri)
    eid = client.create_experiment("another-tool")
    s.runs["other"] = client.create_run(eid, tags={"team": "someone else"}).info.run_id
    mp.undo()
    return s


def view(s: Stored, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.uri)
    return cli(["view", *args])


def block(path: Path, block_id: str) -> Any:
    """One JSON block of the page, by its element id."""
    html = path.read_text(encoding="utf-8")
    found = re.search(
        rf'<script type="application/json" id="{re.escape(block_id)}">(.*?)</script>', html, re.S
    )
    assert found, f"no block {block_id}"
    return json.loads(found.group(1))


def page_data(path: Path) -> dict[str, Any]:
    return block(path, "pov-data")  # type: ignore[no-any-return]


def test_an_unknown_run_id_is_a_clear_error(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert view(stored, monkeypatch, "--run", "0123456789abcdef0123456789abcdef", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "no MLflow run with id '0123456789abcdef0123456789abcdef'" in err and "Traceback" not in err
    assert view(stored, monkeypatch, "--run", "abc123", "--out", str(tmp_path)) == 2
    assert "no execution whose run id starts with 'abc123'" in capsys.readouterr().err
    assert not (tmp_path / "view.html").exists()


def test_a_run_of_another_tool_is_a_clear_error(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert view(stored, monkeypatch, "--run", stored.runs["other"], "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"run {stored.runs['other']} is not a pov execution" in err and "Traceback" not in err
    assert not (tmp_path / "view.html").exists()


def test_bad_arguments_exit_2(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert view(stored, monkeypatch) == 2
    assert "give either SPEC or --run RUN_ID" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert view(stored, monkeypatch, "--run", stored.runs["done"], "--out", str(tmp_path / "file")) == 2
    assert "is a file; name a folder" in capsys.readouterr().err
    done = stored.runs["done"]
    assert view(stored, monkeypatch, "--run", done, "--compare", done[:8], "--out", str(tmp_path)) == 2
    assert "--compare names the same run" in capsys.readouterr().err


def test_a_run_in_progress_shows_what_is_there_and_says_so(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert view(stored, monkeypatch, "--run", stored.runs["running"], "--out", str(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "view.html")
    assert "is still in progress" in err and "the 2 of 4 cells recorded so far" in err
    [ex] = page_data(tmp_path / "view.html")["executions"]
    assert ex["in_progress"] is True and ex["cells_total"] == 4 and len(ex["cells"]) == 2


def test_a_run_with_no_finished_cell_is_a_page_saying_so(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert view(stored, monkeypatch, "--run", stored.runs["empty"], "--out", str(tmp_path)) == 0
    assert "has no finished or crashed cells yet" in capsys.readouterr().err
    [ex] = page_data(tmp_path / "view.html")["executions"]
    assert ex["cells"] == []


def test_an_opened_cell_holds_its_rank_moves_and_the_chunk_its_answer_copied(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, exp: Experiment, tmp_path: Path
) -> None:
    assert view(stored, monkeypatch, "--run", stored.runs["done"], "--out", str(tmp_path)) == 0
    [ex] = page_data(tmp_path / "view.html")["executions"]
    chunks = block(tmp_path / "view.html", "pov-chunks")
    cells = four_cells(exp)
    first = quoting(cell_result(cells[0], 0))
    d = block(tmp_path / "view.html", f"pov-d-0-{cells[0].id}")
    stages = first.context["stages"]
    assert [s["name"] for s in d["stages"]] == ["vector", "query", "pov"]
    for before, after, got in zip(stages, stages[1:], d["stages"][1:], strict=False):
        assert [c["id"] for c in got["chunks"]] == after["ids"]
        assert [c["prev"] for c in got["chunks"]] == [before["ids"].index(i) + 1 for i in after["ids"]]
    assert d["stages"][2]["sims"] == stages[2]["similarities"]
    assert all(chunks[c["id"]] for s in d["stages"] for c in s["chunks"])
    # The answer quoted the top POV chunk whole: that chunk, and only its text, is marked reused.
    top = stages[2]["ids"][0]
    assert set(d["reused"]) == {top}
    text = chunks[top]
    assert text == QUOTED and [text[a:b] for a, b in d["reused"][top]["spans"]] == [QUOTED.rstrip(".")]
    assert d["reused"][top]["share"] == pytest.approx(copied_share(first.output or "", [QUOTED]))
    card = next(c for c in ex["cells"] if c["id"] == cells[0].id)
    assert card["sections"] == [
        {"title": "Context Summary", "present": True},
        {"title": "Opinion", "present": True},
    ]


def test_reused_spans_count_as_the_copied_check_does() -> None:
    context = "The bloc grew from five members to eleven in two years, and more have applied since then."
    answer = "I think the bloc grew from five members to eleven in two years, which is fast."
    share, spans = reused_spans(answer, context)
    assert share == copied_share(answer, [context]) > 0
    assert [context[a:b] for a, b in spans] == [
        "The bloc grew from five members to eleven in two years"
    ]  # case-blind, as the check
    assert reused_spans("too short to have an eight-gram", context) == (0.0, [])


def test_serve_serves_the_page_on_localhost(stored: Stored, tmp_path: Path) -> None:
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = stored.uri
    cmd = [sys.executable, "-m", "runner.cli", "view", "--run", stored.runs["done"], "--out", str(tmp_path)]
    proc = subprocess.Popen([*cmd, "--serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(tmp_path / "view.html")
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/view\.html", line)
        assert url, line
        with urllib.request.urlopen(url.group(0), timeout=10) as resp:
            assert resp.read() == (tmp_path / "view.html").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser() -> Any:
    pytest.importorskip("playwright", reason="pip install -e '.[dev]' (Playwright drives the browser)")
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium")
    b = Browser()
    yield b
    b.close()
    assert all(u.startswith("file://") for u in b.requests) and b.errors == []


def test_in_progress_empty_and_hostile_pages_in_the_browser(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, browser: Any, tmp_path: Path
) -> None:
    for name in ("running", "empty"):
        assert view(stored, monkeypatch, "--run", stored.runs[name], "--out", str(tmp_path / name)) == 0
    page = browser.open((tmp_path / "running" / "view.html").as_uri())
    assert "still running" in page.locator(".warn").inner_text()
    assert page.locator(".card").count() == 2
    hostile = page.locator(".card", has_text="owned")
    assert HOSTILE.splitlines()[0] in " ".join(hostile.inner_text().split())  # shown as text, never run
    assert page.title().startswith("pov view") and page.locator("b", has_text="bold").count() == 0
    empty = browser.open((tmp_path / "empty" / "view.html").as_uri())
    assert "no finished or crashed cells yet" in empty.locator(".warn.empty").inner_text()


def test_compare_marks_a_changed_answer_with_a_word_diff(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, browser: Any, tmp_path: Path, exp: Experiment
) -> None:
    done, edited = stored.runs["done"], stored.runs["edited"]
    assert view(stored, monkeypatch, "--run", done, "--compare", edited, "--out", str(tmp_path)) == 0
    page = browser.open((tmp_path / "view.html").as_uri())
    page.click("button[data-mode=compare]")
    cells = four_cells(exp)
    pairs = page.locator("tr.pair").evaluate_all("rows => rows.map(r => r.dataset.cell)")
    verdicts = dict(zip(pairs, page.locator("td[data-answer]").all_inner_texts(), strict=True))
    # The hostile answer (cell 1) was logged only in `done`; cell 2 was reworded; cell 3 is only in `done`.
    assert verdicts == {cells[0].id: "identical", cells[1].id: "changed", cells[2].id: "changed"}
    assert page.locator("ul.only li").count() == 1 and cells[3].id[:8] in page.locator("ul.only").inner_text()
    page.locator(f"tr.pair[data-cell='{cells[2].id}']").click()
    assert page.locator(".panel .side del").all_text_contents() == []
    assert page.locator(".panel .side ins").all_text_contents() == ["A REWORDED "]
