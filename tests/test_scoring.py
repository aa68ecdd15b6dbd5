"""pov_scores and cosine_scores against a plain loop that follows the notebook's calculate_similarity and
loop_pov_score, on random and on real MiniLM embeddings, numpy and torch."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.retrieval.scoring import cosine_scores, pov_scores, rank_desc

REPO = Path(__file__).resolve().parent.parent


# The notebook's algorithm, written out as plainly as it was there.
def calculate_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def loop_pov_score(mx_similarity: np.ndarray) -> np.ndarray:
    scores = []
    for i in range(len(mx_similarity)):
        row = mx_similarity[i, :]
        scores.append(math.sqrt(np.dot(row, row)))
    return np.array(scores)


def reference_pov(docs: np.ndarray, povs: np.ndarray) -> np.ndarray:
    """Loop over any leading batch dimensions, then the notebook's double loop."""
    docs = np.asarray(docs, dtype=np.float64)
    povs = np.asarray(povs, dtype=np.float64)
    flat = docs.reshape(-1, docs.shape[-2], docs.shape[-1])
    out = []
    for batch in flat:
        mx = np.zeros((len(batch), len(povs)))
        for i in range(len(batch)):
            for j in range(len(povs)):
                mx[i, j] = calculate_similarity(batch[i], povs[j])
        out.append(loop_pov_score(mx))
    return np.array(out).reshape(docs.shape[:-1])


def reference_cosine(query: np.ndarray, docs: np.ndarray) -> np.ndarray:
    return np.array([calculate_similarity(d, query) for d in docs])


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(7, 16), (3, 10, 32), (2, 3, 5, 8), (1, 1, 4)])
@pytest.mark.parametrize("scale", [1.0, 37.0])
def test_pov_score_matches_reference_loop_on_random(shape: tuple[int, ...], scale: float) -> None:
    rng = np.random.default_rng(hash(shape) % 2**32)
    docs = (rng.standard_normal(shape) * scale).astype(np.float32)
    povs = (rng.standard_normal((5, shape[-1])) * 3).astype(np.float32)
    want = reference_pov(docs, povs)
    got = pov_scores(docs, povs)
    assert got.shape == shape[:-1] and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    got_t = pov_scores(torch.from_numpy(docs), torch.from_numpy(povs))
    assert isinstance(got_t, torch.Tensor) and tuple(got_t.shape) == shape[:-1]
    np.testing.assert_allclose(got_t.numpy(), want, atol=1e-5, rtol=1e-5)


def test_orderings_match_reference_on_random() -> None:
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((20, 50, 64)).astype(np.float32)
    povs = rng.standard_normal((16, 64)).astype(np.float32)
    want = reference_pov(docs, povs)
    got = pov_scores(docs, povs)
    for q in range(docs.shape[0]):
        assert rank_desc(got[q]) == list(np.argsort(-want[q], kind="stable"))


def test_assume_normalized_fast_path_on_unit_vectors() -> None:
    rng = np.random.default_rng(1)
    docs = unit(rng.standard_normal((4, 30, 48))).astype(np.float32)
    povs = rng.standard_normal((6, 48)).astype(np.float32)  # POVs need not be unit: they are normalised
    want = reference_pov(docs, povs)
    np.testing.assert_allclose(pov_scores(docs, povs, assume_normalized=True), want, atol=1e-5)
    got_t = pov_scores(torch.from_numpy(docs), torch.from_numpy(povs), assume_normalized=True)
    np.testing.assert_allclose(got_t.numpy(), want, atol=1e-5)


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


@pytest.mark.parametrize("others", [0.0, 3.0])
def test_a_small_product_runs_in_the_calling_thread_on_the_cores_left_idle(
    monkeypatch: pytest.MonkeyPatch, others: float
) -> None:
    """A small product split across every core waits for a busy one (milliseconds); on the idle cores alone,
    and on one thread when the others are busy, it never does."""
    from runner.retrieval import products

    assert products._blas() is not None, "threadpoolctl finds numpy's BLAS"
    monkeypatch.setattr(products._other_load, "cores_busy", lambda: others)
    before = _blas_threads()
    seen: list[tuple[str, int]] = []

    def per_block(block: np.ndarray) -> np.ndarray:
        seen.append((threading.current_thread().name, _blas_threads()))
        return block.sum(axis=1)

    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    got = products.map_row_blocks(rows, per_block, np.dtype(np.float32))
    np.testing.assert_array_equal(got, rows.sum(axis=1))
    assert seen == [(threading.main_thread().name, products.cores() if others == 0 else 1)]
    assert _blas_threads() == before, "the BLAS thread count is restored"


@pytest.mark.parametrize(
    ("busy", "idle"), [(None, 1), (0.0, 4), (0.4, 4), (0.6, 3), (1.0, 3), (2.5, 1), (9.0, 1)]
)
def test_idle_cores_counts_what_other_processes_leave(
    monkeypatch: pytest.MonkeyPatch, busy: float | None, idle: int
) -> None:
    from runner.retrieval import products

    monkeypatch.setattr(products._other_load, "cores_busy", lambda: busy)
    assert products.idle_cores(4) == idle


def test_other_load_sees_another_process_and_not_this_one() -> None:
    """The machine's busy time less this process's own: a spinning process elsewhere reads as a busy core,
    this process's own spinning (its BLAS threads between products) does not."""
    from runner.retrieval.products import OtherLoad

    def window(load: OtherLoad) -> float | None:
        load.cores_busy()
        started = time.monotonic()
        while time.monotonic() - started < 0.4:  # this thread spins through the window
            pass
        return load.cores_busy()

    own = window(OtherLoad())
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        other = OtherLoad()
        other.cores_busy()
        time.sleep(0.4)
        elsewhere = other.cores_busy()
    finally:
        hog.kill()
        hog.wait()
    assert own is not None and elsewhere is not None
    assert own < 0.5, own
    assert elsewhere > 0.7, elsewhere


def test_a_large_operand_is_scored_in_blocks_on_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.retrieval import products

    monkeypatch.setattr(products, "THREADED_MIN_BYTES", 0)
    monkeypatch.setattr(products, "BLOCK_ROWS", 4)
    monkeypatch.setattr(products, "cores", lambda: 3)
    seen: list[tuple[str, int, int]] = []

    def per_block(block: np.ndarray) -> np.ndarray:
        seen.append((threading.current_thread().name, _blas_threads(), len(block)))
        return block.sum(axis=1)

    rows = np.arange(110, dtype=np.float64).reshape(55, 2)  # 13 full blocks and one of 3 rows
    np.testing.assert_array_equal(products.map_row_blocks(rows, per_block, np.dtype(np.float64)), rows.sum(1))
    assert sorted(n for _, _, n in seen) == [3] + [4] * 13
    assert {name for name, _, _ in seen} <= {f"pov-scoring-{i}" for i in range(3)}
    assert {threads for _, threads, _ in seen} == {1}

    rng = np.random.default_rng(2)
    docs = (rng.standard_normal((5, 11, 16)) * 4).astype(np.float32)
    docs.setflags(write=False)
    povs = rng.standard_normal((3, 16)).astype(np.float32)
    got = pov_scores(docs, povs)
    assert got.shape == (5, 11) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_pov(docs, povs), atol=1e-5)
    docs_unit = unit(docs.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(
        pov_scores(docs_unit, povs, assume_normalized=True), reference_pov(docs_unit, povs), atol=1e-5
    )

    def broken(block: np.ndarray) -> np.ndarray:
        raise ValueError("block failed")

    with pytest.raises(ValueError, match="block failed"):
        products.map_row_blocks(rows, broken, np.dtype(np.float64))


def test_integer_and_half_precision_embeddings_score_as_their_values() -> None:
    """Quantised (int8) or float16 rows are converted block by block; the POV matrix is never cast to them."""
    rng = np.random.default_rng(4)
    docs = rng.integers(-100, 100, size=(6, 9, 12)).astype(np.int8)
    povs = rng.standard_normal((4, 12)).astype(np.float32)
    got = pov_scores(docs, povs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_pov(docs, povs), atol=1e-5)
    half = rng.standard_normal((6, 9, 12)).astype(np.float16)
    np.testing.assert_allclose(pov_scores(half, povs), reference_pov(half, povs), atol=1e-4)


def test_non_contiguous_and_float64_inputs() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((12, 9, 20))
    docs = base[:, ::2, :]  # a strided view
    povs = rng.standard_normal((4, 20))
    got = pov_scores(docs, povs)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference_pov(docs, povs), atol=1e-10)
    docs_t = torch.from_numpy(base).transpose(0, 1)[::2]  # non-contiguous tensor
    np.testing.assert_allclose(
        pov_scores(docs_t, torch.from_numpy(povs)).numpy(), reference_pov(docs_t.numpy(), povs), atol=1e-10
    )


def test_zero_document_scores_zero_and_bad_shapes_are_refused() -> None:
    docs = np.zeros((3, 8), dtype=np.float32)
    docs[1] = 1.0
    povs = np.eye(8, dtype=np.float32)[:2]
    got = pov_scores(docs, povs)
    assert got[0] == 0.0 and got[2] == 0.0 and got[1] > 0
    with pytest.raises(ValueError, match="dimension"):
        pov_scores(np.ones((2, 8)), np.ones((3, 7)))
    with pytest.raises(ValueError, match=r"\(p, d\)"):
        pov_scores(np.ones((2, 8)), np.ones(8))
    with pytest.raises(ValueError, match=r"\(\.\.\., n, d\)"):
        pov_scores(np.ones(8), np.ones((3, 8)))


def test_cosine_scores_match_loop_single_and_batched() -> None:
    rng = np.random.default_rng(4)
    docs = rng.standard_normal((6, 10, 24)).astype(np.float32) * 5
    queries = rng.standard_normal((6, 24)).astype(np.float32)
    got = cosine_scores(queries, docs)
    assert got.shape == (6, 10)
    for i in range(6):
        np.testing.assert_allclose(got[i], reference_cosine(queries[i], docs[i]), atol=1e-5)
    one = cosine_scores(queries[0], docs[0])
    np.testing.assert_allclose(one, reference_cosine(queries[0], docs[0]), atol=1e-5)
    got_t = cosine_scores(torch.from_numpy(queries), torch.from_numpy(docs))
    np.testing.assert_allclose(got_t.numpy(), got, atol=1e-5)
    unit_docs, unit_q = unit(docs), unit(queries)
    np.testing.assert_allclose(cosine_scores(unit_q, unit_docs, assume_normalized=True), got, atol=1e-5)


def test_rank_desc_is_stable_on_ties() -> None:
    assert rank_desc([0.5, 0.9, 0.5, 0.9, 0.1]) == [1, 3, 0, 2, 4]


def test_real_minilm_embeddings_match_reference(minilm) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from runner.retrieval.chunking import chunk_file
    from runner.spec import read_corpus

    corpus = read_corpus(REPO / "data" / "brics", ["*.md"])
    chunks = [c.text for f in corpus.files for c in chunk_file(f, 180, 30)]
    docs = minilm.embed(chunks, "document")
    questions = [
        q["text"] for q in yaml.safe_load((REPO / "data/brics/questions.yaml").read_text())["questions"]
    ]
    q_emb = minilm.embed(questions, "query")
    # Per question, the 10 nearest chunks, as stage 2 would hand them over: (questions, 10, 384).
    top = np.argsort(-(q_emb @ docs.T), axis=1)[:, :10]
    batch = docs[top]
    for name in ("global_south", "security", "markets"):
        statements = yaml.safe_load((REPO / f"data/brics/pov_{name}.yaml").read_text())["statements"]
        povs = minilm.embed(statements, "query")
        want = reference_pov(batch, povs)
        got = pov_scores(batch, povs, assume_normalized=True)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(
            pov_scores(torch.from_numpy(batch), torch.from_numpy(povs)).numpy(), want, atol=1e-5
        )
        for q in range(len(questions)):
            assert rank_desc(got[q]) == list(np.argsort(-want[q], kind="stable"))
    for q in range(len(questions)):
        np.testing.assert_allclose(
            cosine_scores(q_emb[q], batch[q], assume_normalized=True),
            reference_cosine(q_emb[q], batch[q]),
            atol=1e-5,
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_cuda_matches_reference() -> None:
    rng = np.random.default_rng(5)
    docs = rng.standard_normal((8, 12, 64)).astype(np.float32)
    povs = rng.standard_normal((7, 64)).astype(np.float32)
    got = pov_scores(torch.from_numpy(docs).cuda(), torch.from_numpy(povs).cuda())
    assert got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), reference_pov(docs, povs), atol=1e-5)
