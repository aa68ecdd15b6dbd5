"""Chunk the corpus and bring its Chroma collection up to date (idempotent).

Only the difference is written: chunks of new or edited files are embedded and added, chunks of edited
or removed files are deleted, and a second ingest of an unchanged corpus writes nothing. Files that
cannot be ingested (empty, binary, not UTF-8) are skipped with a warning naming each one (their old
chunks, if any, are removed); `--strict` refuses the whole ingest instead. Prints added / updated /
deleted / unchanged counts of chunks and files, what the boilerplate filter dropped (by rule; each one
with `--show-dropped`), a warning when chunks are longer than the embedder's window, and the embedding
cache's counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from runner.commands import add_spec_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="drop the collection and ingest from scratch (e.g. after changing the embedder)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="refuse to ingest when any file is empty, binary or not UTF-8"
    )
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    parser.add_argument(
        "--show-dropped",
        action="store_true",
        help="list every paragraph and chunk the boilerplate filter dropped, with its file and rule",
    )


def main(args: argparse.Namespace) -> int:
    from runner.retrieval import ingest, truncation_warning
    from runner.spec import load_spec

    exp = load_spec(args.spec, args.overrides)
    report = ingest(exp, rebuild=args.rebuild, strict=args.strict, show_dropped=args.show_dropped)
    for s in report.skipped:
        sys.stderr.write(f"warning: skipped {s}\n")
    if report.truncated:
        sys.stderr.write(f"warning: {truncation_warning(report, exp.spec.embedder.model)}\n")
    by_rule = dict(Counter(report.dropped).most_common())
    for rel in report.no_chunks:
        sys.stderr.write(f"note: {rel}: no chunks (every paragraph is boilerplate or too short)\n")
    if args.json:
        print(
            json.dumps(
                {
                    "collection": report.collection,
                    "location": report.location,
                    "chunks": report.chunks,
                    "files": report.files,
                    "skipped": [{"file": s.rel, "reason": s.reason} for s in report.skipped],
                    "embedding": report.embedding,
                    "dropped": by_rule,
                    "truncated": report.truncated,
                    "window": report.window,
                    **(
                        {
                            "dropped_items": [
                                {"file": d.source, "reason": d.reason, "text": d.text}
                                for d in report.dropped_items
                            ]
                        }
                        if args.show_dropped
                        else {}
                    ),
                }
            )
        )
        return 0

    def fmt(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {counts[k]}" for k in ("added", "updated", "deleted", "unchanged"))

    print(f"collection {report.collection} at {report.location}")
    print(f"  chunks: {fmt(report.chunks)}")
    print(f"  files:  {fmt(report.files)}" + (f"; skipped {len(report.skipped)}" if report.skipped else ""))
    if report.dropped:
        rules = ", ".join(f"{reason} {n}" for reason, n in by_rule.items())
        hint = "" if args.show_dropped else " (--show-dropped lists them)"
        print(f"  dropped as boilerplate: {sum(by_rule.values())} ({rules}){hint}")
    if args.show_dropped:
        for d in report.dropped_items:
            line = " ".join(d.text.split())
            print(f"    {d.source}: {d.reason}: {line[:110] + '…' if len(line) > 110 else line}")
    if report.window is not None:
        print(f"  longer than the embedder's window ({report.window} tokens): {report.truncated} chunks")
    e = report.embedding
    print(f"  embedding cache: {e['hits']} hits, {e['misses']} misses, {e['provider_calls']} provider calls")
    return 0
