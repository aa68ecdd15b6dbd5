"""Show the three retrieval stages (vector search, query rerank, POV rerank) per question and POV set.

The keys are the (question, POV set, k schedule) combinations of the spec's cells, narrowed or replaced
by --question / --pov-set / --k. Needs an ingested collection (`pov ingest SPEC`); if the corpus changed
since, it warns and uses the stored chunks. Ends with the embedding cache's counts (to stderr with --json,
whose stdout is one JSON object per key).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from runner.commands import add_spec_arguments
from runner.errors import UserError


def _k(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(x) for x in text.replace("-", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K1,K2,K3 (e.g. 15,10,5), got {text!r}") from None
    if len(parts) != 3 or not parts[0] >= parts[1] >= parts[2] >= 1:
        raise argparse.ArgumentTypeError(f"expected three sizes K1 >= K2 >= K3 >= 1, got {text!r}")
    return parts[0], parts[1], parts[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument("--question", action="append", metavar="ID", help="question id (repeatable)")
    parser.add_argument("--pov-set", action="append", metavar="NAME", help="POV set name (repeatable)")
    parser.add_argument("--k", type=_k, metavar="K1,K2,K3", help="one k schedule instead of the spec's")
    parser.add_argument("--json", action="store_true", help="one JSON object per key on stdout")
    parser.add_argument("--width", type=int, default=70, help="characters of each chunk's first line shown")


def select_keys(
    exp: Any, questions: list[str] | None, pov_sets: list[str] | None, k: tuple[int, int, int] | None
) -> list[tuple[str, str, tuple[int, int, int]]]:
    from runner.spec import expand

    cells = expand(exp)
    qs = questions or list(dict.fromkeys(c.question for c in cells))
    ps = pov_sets or list(dict.fromkeys(c.pov_set for c in cells))
    ks = [k] if k else list(dict.fromkeys(c.k for c in cells))
    for q in qs:
        if q not in exp.questions:
            raise UserError(f"--question {q!r}: no such question (declared: {', '.join(exp.questions)})")
    for p in ps:
        if p not in exp.pov_sets:
            raise UserError(f"--pov-set {p!r}: no such POV set (declared: {', '.join(exp.pov_sets)})")
    return [(q, p, kk) for q in qs for p in ps for kk in ks]


def _first_line(text: str, width: int) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


def _table(result: Any, question_text: str, sources: dict[str, str], width: int) -> Any:
    from rich.table import Table

    ranks: list[dict[str, tuple[int, float]]] = [
        {i: (r, s) for r, (i, s) in enumerate(zip(st.ids, st.scores, strict=True), 1)} for st in result.stages
    ]
    texts = dict(zip(result.stages[0].ids, result.stages[0].texts, strict=True))
    # Chunks that reached stage 3 first (in its order), then the rest of stage 2, then of stage 1.
    rows = list(dict.fromkeys([*result.stages[2].ids, *result.stages[1].ids, *result.stages[0].ids]))
    k = "-".join(map(str, result.k))
    table = Table(
        title=f"{result.question} · {result.pov_set} · k={k}",
        caption=question_text,
        caption_justify="left",
        expand=True,
    )
    for name in ("vector", "query", "pov"):
        table.add_column(f"# {name}", justify="right", no_wrap=True, min_width=8)
    table.add_column("chunk", no_wrap=True, min_width=8)
    table.add_column("source", no_wrap=True, overflow="ellipsis", min_width=8, max_width=18)
    table.add_column("first line", no_wrap=True, overflow="ellipsis", ratio=1)
    for cid in rows:
        cells = []
        for st in ranks:
            r, s = st.get(cid, (0, 0.0))
            cells.append(f"{r:>2} {s:.3f}" if r else "")
        table.add_row(*cells, cid[:8], sources.get(cid, ""), _first_line(texts[cid], width))
    return table


def main(args: argparse.Namespace) -> int:
    from runner.retrieval import ChromaRetriever
    from runner.spec import load_spec

    exp = load_spec(args.spec, args.overrides)
    keys = select_keys(exp, args.question, args.pov_set, args.k)
    retriever = ChromaRetriever(exp)
    results = retriever.retrieve(keys)
    for w in retriever.warnings:
        sys.stderr.write(f"warning: {w}\n")
    stats = retriever.cache_stats()
    summary = (
        f"embedding cache: {stats['hits']} hits, {stats['misses']} misses, "
        f"{stats['provider_calls']} provider calls"
    )
    if args.json:
        for key in keys:
            sys.stdout.write(json.dumps(results[key].to_dict()) + "\n")
        sys.stderr.write(summary + "\n")
        return 0
    from rich.console import Console

    console = Console()
    col = retriever.store.collection()
    ids = list(dict.fromkeys(i for r in results.values() for i in r.stages[0].ids))
    got = col.get(ids=ids, include=["metadatas"]) if col is not None and ids else {"ids": [], "metadatas": []}
    sources = {
        i: str((m or {}).get("source", "")) for i, m in zip(got["ids"], got["metadatas"] or [], strict=False)
    }
    for key in keys:
        console.print(_table(results[key], exp.questions[key[0]].text, sources, args.width))
    console.print(summary)
    return 0
