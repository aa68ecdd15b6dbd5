"""The stage-3 methods beside the notebook's `l2`: `blend_scores` and `contrast_scores` against plain loops that
follow their documented formulas, numpy and torch, batched; and what each is for, on vectors built to show it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from runner.retrieval.scoring import blend_scores, contrast_scores, pov_scores, rank_desc, standardize


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def mean_cos(doc: np.ndarray, statements: np.ndarray) -> float:
    return sum(cos(doc, s) for s in statements) / len(statements)


def contrast_loop(docs: np.ndarray, povs: np.ndarray, refs: list[np.ndarray]) -> np.ndarray:
    flat = docs.reshape(-1, docs.shape[-1]).astype(np.float64)
    out = [mean_cos(d, povs) - sum(mean_cos(d, r) for r in refs) / len(refs) for d in flat]
    return np.array(out).reshape(docs.shape[:-1])


def z_loop(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / std if std > 0 else 0.0 for v in values]


def blend_loop(docs: np.ndarray, povs: np.ndarray, relevance: np.ndarray, weight: float) -> np.ndarray:
    docs64 = docs.astype(np.float64)
    rows_d = docs64.reshape(-1, docs.shape[-2], docs.shape[-1])
    rows_r = relevance.astype(np.float64).reshape(-1, relevance.shape[-1])
    out = []
    for batch, rel in zip(rows_d, rows_r, strict=True):
        pov = [math.sqrt(sum(cos(d, p) ** 2 for p in povs)) for d in batch]
        out.append(
            [(1 - weight) * a + weight * b for a, b in zip(z_loop(list(rel)), z_loop(pov), strict=True)]
        )
    return np.array(out).reshape(relevance.shape)


@pytest.mark.parametrize("shape", [(9, 16), (3, 10, 32), (2, 2, 6, 8)])
def test_contrast_matches_its_formula_numpy_and_torch(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    docs = (rng.standard_normal(shape) * 5).astype(np.float32)
    povs = rng.standard_normal((5, shape[-1])).astype(np.float32)
    refs = [rng.standard_normal((n, shape[-1])).astype(np.float32) * 2 for n in (3, 7)]
    want = contrast_loop(docs, povs, refs)
    got = contrast_scores(docs, povs, refs)
    assert got.shape == shape[:-1] and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    got_t = contrast_scores(
        torch.from_numpy(docs), torch.from_numpy(povs), [torch.from_numpy(r) for r in refs]
    )
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), want, atol=1e-5)
    unit = docs / np.linalg.norm(docs, axis=-1, keepdims=True)
    np.testing.assert_allclose(contrast_scores(unit, povs, refs, assume_normalized=True), want, atol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_blend_matches_its_formula_numpy_and_torch(weight: float) -> None:
    rng = np.random.default_rng(7)
    docs = rng.standard_normal((4, 12, 24)).astype(np.float32)
    povs = rng.standard_normal((6, 24)).astype(np.float32)
    relevance = rng.standard_normal((4, 12)).astype(np.float32) * 3 + 10  # a cross-encoder's logit scale
    want = blend_loop(docs, povs, relevance, weight)
    got = blend_scores(docs, povs, relevance, weight=weight)
    assert got.shape == (4, 12)
    np.testing.assert_allclose(got, want, atol=1e-5)
    got_t = blend_scores(
        torch.from_numpy(docs), torch.from_numpy(povs), torch.from_numpy(relevance), weight=weight
    )
    np.testing.assert_allclose(got_t.numpy(), want, atol=1e-5)


def test_blend_weight_ends_are_stage_two_and_l2_orders() -> None:
    rng = np.random.default_rng(8)
    docs = rng.standard_normal((3, 15, 16)).astype(np.float32)
    povs = rng.standard_normal((4, 16)).astype(np.float32)
    relevance = rng.standard_normal((3, 15)).astype(np.float32)
    l2 = pov_scores(docs, povs)
    for q in range(3):
        assert rank_desc(blend_scores(docs, povs, relevance, weight=1.0)[q]) == rank_desc(l2[q])
        assert rank_desc(blend_scores(docs, povs, relevance, weight=0.0)[q]) == rank_desc(relevance[q])


def test_standardize_leaves_equal_values_at_zero() -> None:
    np.testing.assert_array_equal(standardize(np.array([[2.0, 2.0, 2.0]])), [[0.0, 0.0, 0.0]])
    assert torch.equal(standardize(torch.tensor([[1.0, 1.0]])), torch.tensor([[0.0, 0.0]]))


def test_bad_inputs_are_refused() -> None:
    docs, povs = np.ones((2, 3, 8)), np.ones((4, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend_scores(docs, povs, np.ones((2, 3)), weight=1.5)
    with pytest.raises(ValueError, match="shape"):
        blend_scores(docs, povs, np.ones((2, 4)))
    with pytest.raises(ValueError, match="reference"):
        contrast_scores(docs, povs, [])
    with pytest.raises(ValueError, match="dimension"):
        contrast_scores(docs, povs, [np.ones((2, 7))])


def _topic_and_stances(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statements of two opposed sets share one strong topic direction and differ in a weaker stance
    direction. Documents 0-5 are the topic alone (an overview of the subject), 6-10 lean to set A's
    stance, 11-15 to set B's."""
    rng = np.random.default_rng(seed)
    d = 64
    topic, pro, con = np.linalg.qr(rng.standard_normal((d, 3)))[0].T  # orthonormal directions
    set_a = np.stack([3 * topic + pro + 0.05 * rng.standard_normal(d) for _ in range(5)])
    set_b = np.stack([3 * topic + con + 0.05 * rng.standard_normal(d) for _ in range(5)])
    overview = [3 * topic + 0.05 * rng.standard_normal(d) for _ in range(6)]
    leaning = [1.5 * topic + 1.5 * side + 0.05 * rng.standard_normal(d) for side in [pro] * 5 + [con] * 5]
    return np.stack(overview + leaning).astype(np.float32), set_a.astype(np.float32), set_b.astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_contrast_separates_opposed_sets_where_l2_does_not(seed: int) -> None:
    docs, set_a, set_b = _topic_and_stances(seed)
    top = 5
    l2_a, l2_b = (set(rank_desc(pov_scores(docs, s))[:top]) for s in (set_a, set_b))
    assert l2_a | l2_b <= set(range(6))  # both sets pick overviews of the subject, not their stance
    c_a = set(rank_desc(contrast_scores(docs, set_a, [set_b]))[:top])
    c_b = set(rank_desc(contrast_scores(docs, set_b, [set_a]))[:top])
    assert c_a == set(range(6, 11)) and c_b == set(range(11, 16))  # each set its own side
