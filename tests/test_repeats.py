"""Repeats end to end: each repeat of a cell runs with its own seed (sampling then gives other answers), the
tracker records which repeat of which cell a child run is, and the report shows the spread across repeats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingTracker, StubRetriever, gen_spec

from runner.report.load import CellRow
from runner.report.repeats import repeat_summary
from runner.run import CellResult
from runner.spec import Cell, expand, load_spec, repeat_seed
from runner.tracking.records import cell_params


@pytest.mark.slow
def test_each_repeat_samples_with_its_own_seed(tmp_path: Path, tiny_model_dir: Path) -> None:
    from runner.run.engine import run_experiment

    path = gen_spec(tmp_path, tiny_model_dir, questions=1, personas=2, pov_sets=1, extra="")
    text = path.read_text().replace("temperature: 0.0, seed: 0", "temperature: 1.0, seed: 5")
    path.write_text(text + "matrix: {repeat: 3}\n")
    exp = load_spec(path)
    cells = expand(exp)
    assert len(cells) == 6
    tracker = RecordingTracker()
    run_experiment(exp, cells, tracker, retriever=StubRetriever(), quiet=True)
    results = tracker.results
    assert {r.status for r in results.values()} == {"finished"}
    for c in cells:
        assert results[c.id].metrics["seed"] == float(repeat_seed(5, c.repeat))
        assert results[c.id].metrics["seed"] == (5.0 if c.repeat == 0 else results[c.id].metrics["seed"])
    # Batches never mix repeats: each repeat's two cells made one batch of their own.
    for c in cells:
        peers = {
            cells_by_id.repeat for cells_by_id in cells if cells_by_id.id in results[c.id].batch["cells"]
        }
        assert peers == {c.repeat} and len(results[c.id].batch["cells"]) == 2
    # Sampling with another seed gives another answer (8-token samples of a random model never coincide).
    for base in (c for c in cells if c.repeat == 0):
        answers = [results[c.id].output for c in cells if c.base == base.id]
        assert len(answers) == 3 and len(set(answers)) == 3


def test_the_tracker_records_which_repeat_of_which_cell(tmp_path: Path) -> None:
    base = Cell("base00000001", "m", "t", "p", "s", (3, 2, 1), "q")
    again = Cell("rep000000002", "m", "t", "p", "s", (3, 2, 1), "q", repeat=2, base_id=base.id)
    for cell, repeat, base_id in ((base, "0", base.id), (again, "2", base.id)):
        params = cell_params(CellResult(cell, "finished", "prompt", {}), ("m", "rev"), {})
        assert (params["repeat"], params["base_cell_id"]) == (repeat, base_id)


def row(cid: str, base: str, repeat: int, crashed: bool, output: str) -> CellRow:
    return CellRow(
        f"run-{cid}",
        cid,
        {"model": "m", "template": "t", "persona": "p", "pov_set": "s", "k": "3-2-1", "question": "q"},
        "crashed" if crashed else "finished",
        "exception" if crashed else None,
        {},
        {},
        0,
        tags={} if crashed else {"pov.output_hash": output},
        params={"repeat": str(repeat), "base_cell_id": base},
    )


def test_the_report_shows_the_spread_across_repeats() -> None:
    cells = [
        row("a0", "a0", 0, False, "x"),
        row("a1", "a0", 1, False, "x"),
        row("b0", "b0", 0, False, "y"),
        row("b1", "b0", 1, False, "z"),  # another answer
        row("c0", "c0", 0, False, "w"),
        row("c1", "c0", 1, True, ""),  # crashed in one repeat
    ]
    summary: dict[str, Any] | None = repeat_summary(cells)
    assert summary is not None
    assert [(r["value"], r["n"], r["k"]) for r in summary["per_repeat"]] == [("0", 3, 0), ("1", 3, 1)]
    assert (summary["rate_min"], summary["rate_max"]) == (0.0, 1 / 3)
    assert (summary["cells"], summary["differing"], summary["differing_cells"]) == (3, 2, ["b0", "c0"])
    assert repeat_summary([row("a0", "a0", 0, False, "x")]) is None, "no repeats, no table"
