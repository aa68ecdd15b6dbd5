"""Show the three retrieval stages (vector search, query rerank, POV rerank) per question and POV set.

The keys are the (question, POV set, k schedule, POV scoring method) combinations of the spec's cells,
narrowed or replaced by --question / --pov-set / --k / --pov-score. Needs an ingested collection (`pov
ingest SPEC`); if the corpus changed since, it warns and uses the stored chunks.

Under each key's table, a line says what the stages did (runner.retrieval.metrics): how much of the
question's own top stage 3 kept, where the best match ended, how specific the POV set's picks are, and the
boilerplate and truncated chunks per stage. `--compare-pov` shows the POV sets' final chunks side by side per
question instead; `--summary` prints only the averages by scoring method. Ends with the embedding cache's
counts (to stderr with --json, whose stdout is one JSON object per key).
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
    parser.add_argument(
        "--pov-score",
        action="append",
        metavar="NAME",
        help="stage-3 scoring method of pov_scores (repeatable)",
    )
    parser.add_argument(
        "--compare-pov",
        action="store_true",
        help="the POV sets' final chunks side by side, per question, k schedule and method",
    )
    parser.add_argument(
        "--summary", action="store_true", help="only the averages by scoring method (and POV set)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per key on stdout")
    parser.add_argument("--width", type=int, default=70, help="characters of each chunk's first line shown")


def select_keys(
    exp: Any,
    questions: list[str] | None,
    pov_sets: list[str] | None,
    k: tuple[int, int, int] | None,
    pov_scores: list[str] | None = None,
) -> list[tuple[str, str, tuple[int, int, int], str]]:
    from runner.spec import expand

    cells = expand(exp)
    qs = questions or list(dict.fromkeys(c.question for c in cells))
    ps = pov_sets or list(dict.fromkeys(c.pov_set for c in cells))
    ks = [k] if k else list(dict.fromkeys(c.k for c in cells))
    ss = pov_scores or list(dict.fromkeys(c.pov_score for c in cells))
    for s in ss:
        if s not in exp.spec.pov_scores:
            raise UserError(f"--pov-score {s!r}: no such method (declared: {', '.join(exp.spec.pov_scores)})")
    for q in qs:
        if q not in exp.questions:
            raise UserError(f"--question {q!r}: no such question (declared: {', '.join(exp.questions)})")
    for p in ps:
        if p not in exp.pov_sets:
            raise UserError(f"--pov-set {p!r}: no such POV set (declared: {', '.join(exp.pov_sets)})")
    return [(q, p, kk, sc) for q in qs for p in ps for kk in ks for sc in ss]


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
    method = f" · {result.pov_score}" if result.pov_score != "l2" else ""
    table = Table(
        title=f"{result.question} · {result.pov_set} · k={k}{method}",
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
    keys = select_keys(exp, args.question, args.pov_set, args.k, args.pov_score)
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
    if args.summary:
        console.print(summary_table([results[key] for key in keys]))
        console.print(summary)
        return 0
    col = retriever.store.collection()
    ids = list(dict.fromkeys(i for r in results.values() for i in r.stages[0].ids))
    got = col.get(ids=ids, include=["metadatas"]) if col is not None and ids else {"ids": [], "metadatas": []}
    sources = {
        i: str((m or {}).get("source", "")) for i, m in zip(got["ids"], got["metadatas"] or [], strict=False)
    }
    if args.compare_pov:
        for group in _by_question(keys):
            console.print(compare_table([results[key] for key in group], sources, args.width))
    else:
        for key in keys:
            console.print(_table(results[key], exp.questions[key[0]].text, sources, args.width))
            console.print(metrics_line(results[key].metrics, results[key].k[2]))
    if len(keys) > 1:
        console.print(summary_table([results[key] for key in keys]))
    console.print(summary)
    return 0


def metrics_line(m: dict[str, float], k3: int) -> str:
    """What the stages did for one key, in a line (runner.retrieval.metrics)."""
    if "relevance_kept" not in m:
        return ""
    rank = int(m["best_match_rank"])
    parts = [
        f"relevance kept {100 * m['relevance_kept']:.0f}%",
        f"best match at {rank}" + (" (dropped)" if rank > k3 else ""),
    ]
    if "stance_specificity" in m:
        parts.append(f"stance specificity {m['stance_specificity']:.2f}")
    share = [m.get(f"stage{n}_boilerplate_share") for n in (1, 2, 3)]
    parts.append("boilerplate " + "/".join(f"{100 * v:.0f}%" if v is not None else "–" for v in share))
    if "stage1_truncated" in m:
        parts.append("truncated " + "/".join(f"{m[f'stage{n}_truncated']:.0f}" for n in (1, 2, 3)))
    return "  " + " · ".join(parts)


def _by_question(keys: list[Any]) -> list[list[Any]]:
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for key in keys:
        groups.setdefault((key[0], key[2], key[3]), []).append(key)
    return list(groups.values())


def compare_table(results: list[Any], sources: dict[str, str], width: int) -> Any:
    """Final chunks of each POV set for one question, k schedule and method, side by side; `*` marks a chunk
    another set also picked."""
    from rich.table import Table

    first = results[0]
    k = "-".join(map(str, first.k))
    table = Table(
        title=f"{first.question} · k={k} · {first.pov_score}: final chunks by POV set (* also another set's)",
        expand=True,
    )
    table.add_column("#", justify="right", no_wrap=True)
    finals = [r.stages[2] for r in results]
    for r in results:
        spec = r.metrics.get("stance_specificity")
        label = r.pov_set + (f" (specificity {spec:.2f})" if spec is not None else "")
        table.add_column(label, overflow="fold", ratio=1)
    depth = max((len(f.ids) for f in finals), default=0)
    for rank in range(depth):
        row = [str(rank + 1)]
        for j, f in enumerate(finals):
            if rank >= len(f.ids):
                row.append("")
                continue
            cid = f.ids[rank]
            shared = any(cid in other.ids for i, other in enumerate(finals) if i != j)
            source = sources.get(cid, "")
            row.append(f"{'*' if shared else ' '}{cid[:8]} {source}: {_first_line(f.texts[rank], width)}")
        table.add_row(*row)
    return table


SUMMARY_COLUMNS = [
    ("relevance_kept", "relevance kept", True),
    ("best_kept", "best match kept", True),
    ("stance_specificity", "stance specificity", False),
    ("stage1_boilerplate_share", "boilerplate stage 1", True),
    ("stage3_boilerplate_share", "boilerplate stage 3", True),
]


def summary_table(results: list[Any]) -> Any:
    """The metrics averaged by scoring method, over every POV set and per POV set."""
    import statistics

    from rich.table import Table

    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in results:
        values = {**r.metrics, "best_kept": float(r.metrics.get("best_match_rank", 0) <= r.k[2])}
        for pov in ("all", r.pov_set):
            groups.setdefault((r.pov_score, pov), []).append(values)
    table = Table(title="by scoring method and POV set (means over questions and k schedules)")
    table.add_column("method")
    table.add_column("POV set")
    table.add_column("keys", justify="right")
    for _, title, _ in SUMMARY_COLUMNS:
        table.add_column(title, justify="right")
    for method, pov in sorted(groups, key=lambda g: (g[0], g[1] != "all", g[1])):
        rows = groups[(method, pov)]
        cells = []
        for key, _, pct in SUMMARY_COLUMNS:
            got = [r[key] for r in rows if key in r]
            mean = statistics.fmean(got) if got else None
            cells.append("–" if mean is None else f"{100 * mean:.0f}%" if pct else f"{mean:.2f}")
        table.add_row(method, pov, str(len(rows)), *cells)
    return table
