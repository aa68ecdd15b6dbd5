"""What `pov run` prints of the answers: check pass rates per template · persona, and one excerpt."""

from __future__ import annotations

import json
from pathlib import Path

from runner.run import answer_excerpt, check_table, finished_rows


def _row(cid: str, template: str, persona: str, output: str, **checks: str) -> dict[str, object]:
    return {
        "cell": {"id": cid, "template": template, "persona": persona, "pov_set": "p", "question": "q"},
        "status": "finished",
        "output": output,
        "tags": {"model_name": "m", **{f"check.{k}": v for k, v in checks.items()}},
    }


def test_pass_rates_per_template_and_persona_from_the_latest_result_of_each_cell(tmp_path: Path) -> None:
    rows = [
        _row("a", "t1", "prof", "x", sections="fail", copied="pass"),
        _row("b", "t1", "prof", "x", sections="pass", copied="fail"),
        _row("c", "t2", "asst", "x", sections="pass"),
        {**_row("d", "t2", "asst", ""), "status": "crashed"},
        _row("a", "t1", "prof", "x", sections="pass", copied="pass"),  # a's retry: the last line wins
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = check_table(finished_rows(path))
    assert table.checks == ["sections", "copied"]
    assert table.rows == [
        ("t1 · prof", {"sections": (2, 2), "copied": (1, 2)}),
        ("t2 · asst", {"sections": (1, 1)}),
    ]


def test_the_excerpt_is_the_answer_that_failed_fewest_checks_cut_after_its_words() -> None:
    rows = [
        _row("a", "t", "p", "bad " * 80, sections="fail", copied="fail"),
        _row("b", "t", "p", "Japan  should\nhedge, " + "carefully " * 60, sections="pass", copied="fail"),
    ]
    shown = answer_excerpt(rows, max_words=3)
    assert shown is not None and shown.cell["id"] == "b"
    assert shown.text == "Japan should hedge …" and shown.failed == ["copied"]
    assert answer_excerpt([]) is None
