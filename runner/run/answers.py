"""What a run's answers look like, as `pov run` prints it at the end: the output checks' pass rates per
template and persona, and an excerpt of one real answer, read back from the execution's results.jsonl (so
cells recorded by an earlier, resumed run count too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.run.checks import CHECK_PASS, CHECK_TAG_PREFIX, words
from runner.run.sinks import read_results

EXCERPT_WORDS = 45


@dataclass(frozen=True)
class CheckTable:
    checks: list[str]
    """Check names, in column order."""
    rows: list[tuple[str, dict[str, tuple[int, int]]]]
    """(template · persona, {check: (passed, cells it applies to)}), in the order the cells came."""


@dataclass(frozen=True)
class Excerpt:
    cell: dict[str, Any]
    text: str
    failed: list[str]
    """The checks this answer failed."""


def finished_rows(results: Path) -> list[dict[str, Any]]:
    """The current result of every finished cell in results.jsonl."""
    return [r for r in read_results(results).values() if r.get("status") == "finished"]


def _checks(row: dict[str, Any]) -> dict[str, str]:
    tags = row.get("tags")
    if not isinstance(tags, dict):
        return {}
    n = len(CHECK_TAG_PREFIX)
    return {k[n:]: str(v) for k, v in tags.items() if isinstance(k, str) and k.startswith(CHECK_TAG_PREFIX)}


def _group(row: dict[str, Any]) -> str:
    cell = row.get("cell")
    cell = cell if isinstance(cell, dict) else {}
    return f"{cell.get('template')} · {cell.get('persona')}"


def check_table(rows: list[dict[str, Any]]) -> CheckTable:
    names: dict[str, None] = {}
    groups: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        checks = _checks(row)
        tally = groups.setdefault(_group(row), {})
        for name, verdict in checks.items():
            names.setdefault(name)
            counts = tally.setdefault(name, [0, 0])
            counts[0] += verdict == CHECK_PASS
            counts[1] += 1
    return CheckTable(
        list(names),
        [(group, {k: (v[0], v[1]) for k, v in tally.items()}) for group, tally in groups.items()],
    )


def answer_excerpt(rows: list[dict[str, Any]], max_words: int = EXCERPT_WORDS) -> Excerpt | None:
    """The first words of one answer: the first of those that failed the fewest checks."""
    if not rows:
        return None
    row = min(rows, key=lambda r: sum(v != CHECK_PASS for v in _checks(r).values()))
    output = str(row.get("output") or "")
    cut = words(output)[:max_words]
    text = " ".join(output.split())
    if cut:
        # Cut the whitespace-normalised answer just after its max_words-th word.
        pos = 0
        for w in cut:
            pos = text.find(w, pos) + len(w)
        text = text[:pos] + (" …" if pos < len(text) else "")
    cell = row.get("cell")
    return Excerpt(
        cell if isinstance(cell, dict) else {},
        text,
        [name for name, v in _checks(row).items() if v != CHECK_PASS],
    )
