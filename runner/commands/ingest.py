"""Chunk the corpus and bring its Chroma collection up to date (idempotent).

Only the difference is written: chunks of new or edited files are embedded and added, chunks of edited
or removed files are deleted, and a second ingest of an unchanged corpus writes nothing. Files that
cannot be ingested (empty, binary, not UTF-8) are skipped with a warning naming each one (their old
chunks, if any, are removed); `--strict` refuses the whole ingest instead. Prints added / updated /
deleted / unchanged counts of chunks and files, and the embedding cache's counts.
"""

from __future__ import annotations

import argparse
import json
import sys

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


def main(args: argparse.Namespace) -> int:
    from runner.retrieval import ingest
    from runner.spec import load_spec

    exp = load_spec(args.spec, args.overrides)
    report = ingest(exp, rebuild=args.rebuild, strict=args.strict)
    for s in report.skipped:
        sys.stderr.write(f"warning: skipped {s}\n")
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
                }
            )
        )
        return 0

    def fmt(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {counts[k]}" for k in ("added", "updated", "deleted", "unchanged"))

    print(f"collection {report.collection} at {report.location}")
    print(f"  chunks: {fmt(report.chunks)}")
    print(f"  files:  {fmt(report.files)}" + (f"; skipped {len(report.skipped)}" if report.skipped else ""))
    e = report.embedding
    print(f"  embedding cache: {e['hits']} hits, {e['misses']} misses, {e['provider_calls']} provider calls")
    return 0
