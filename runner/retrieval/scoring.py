"""The scores of retrieval stages 2 and 3, for numpy arrays and torch tensors (any device).

`pov_scores` is the POV score (the notebook called it the "sexy score"): for each document, the L2 norm of its vector of cosine
similarities to the POV statements,

    score(d) = sqrt(sum_j cos(d, p_j)^2) = sqrt(sum_j (d . p_j / |p_j|)^2) / |d|,

computed with one matrix product for a whole batch (`doc_emb` of shape (..., n, d) is viewed as one
(N, d) matrix). The POV matrix is small and is normalised up front; the large operand is never copied to
be normalised: its row norms divide the small (N,) result instead, and with `assume_normalized=True`
(unit vectors, as every embedder in this package returns, and what retrieval passes) they are not
computed at all.

numpy inputs stay in numpy, threaded by size (runner.retrieval.products): a small batch on the BLAS threads
of the cores idle at that moment, so it never waits for a busy core; a large one in row blocks over every core, each block's norms computed
while it is in cache, so the norms cost no second pass over memory (see benchmarks/bench_scoring.py).

torch is imported only when a tensor is passed, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from runner.retrieval.products import idle_blas_threads, map_row_blocks

ArrayT = TypeVar("ArrayT")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _check_shapes(doc_shape: tuple[int, ...], other_shape: tuple[int, ...], what: str) -> None:
    if len(doc_shape) < 2:
        raise ValueError(f"doc_emb must have shape (..., n, d), got {doc_shape}")
    if not other_shape or other_shape[-1] != doc_shape[-1]:
        raise ValueError(f"{what} has dimension {other_shape[-1:]} but doc_emb has {doc_shape[-1]}")


if hasattr(np, "vecdot"):  # numpy >= 2.0

    def _row_dots(x: np.ndarray) -> np.ndarray:
        """Each row's dot product with itself (vecdot: twice einsum's speed on a 4 MB operand)."""
        return np.vecdot(x, x)  # type: ignore[no-any-return]

else:

    def _row_dots(x: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x, x)  # type: ignore[no-any-return]


def pov_scores(doc_emb: ArrayT, pov_emb: Any, *, assume_normalized: bool = False) -> ArrayT:
    """POV score of each document: `doc_emb` (..., n, d), `pov_emb` (p, d) -> (..., n).

    numpy in, numpy out (float32 stays float32); torch in, torch out on `doc_emb`'s device and dtype.
    `assume_normalized` skips the document norms: pass it only for unit-length rows.
    """
    if _is_torch(doc_emb):
        return _pov_torch(doc_emb, pov_emb, assume_normalized)  # type: ignore[no-any-return]
    docs = np.asarray(doc_emb)
    povs = np.asarray(pov_emb)
    if povs.ndim != 2:
        raise ValueError(f"pov_emb must have shape (p, d), got {povs.shape}")
    _check_shapes(docs.shape, povs.shape, "pov_emb")
    dtype = np.result_type(docs.dtype, povs.dtype, np.float32)
    povs = povs.astype(dtype, copy=False)
    pov_unit = povs / np.linalg.norm(povs, axis=1, keepdims=True)
    lead, d = docs.shape[:-1], docs.shape[-1]
    flat = docs.reshape(-1, d)  # a view for contiguous input: one (N, d) @ (d, p) product for the batch
    # The product runs in the operand's own float type; integers and float16 (no BLAS for them) are
    # converted block by block, never as a whole copy.
    work = flat.dtype if flat.dtype in (np.float32, np.float64) else dtype
    pov_t = np.ascontiguousarray(pov_unit.T.astype(work, copy=False))

    def per_block(block: np.ndarray) -> np.ndarray:
        if block.dtype != work:
            block = block.astype(work)
        # The norms first: their pass brings the block into cache, where the product then finds it (the other
        # order read it from memory twice: 0.39 ms against 0.29 at the notebook's shape).
        norms = None if assume_normalized else np.sqrt(_row_dots(block))
        sims = block @ pov_t
        out: np.ndarray = np.sqrt(_row_dots(sims))
        if norms is None:
            return out
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)  # type: ignore[no-any-return]

    return map_row_blocks(flat, per_block, dtype).reshape(lead)  # type: ignore[return-value]


def _pov_torch(doc_emb: Any, pov_emb: Any, assume_normalized: bool) -> Any:
    import torch

    docs = doc_emb
    povs = pov_emb if _is_torch(pov_emb) else torch.as_tensor(np.asarray(pov_emb))
    if povs.ndim != 2:
        raise ValueError(f"pov_emb must have shape (p, d), got {tuple(povs.shape)}")
    _check_shapes(tuple(docs.shape), tuple(povs.shape), "pov_emb")
    if not docs.is_floating_point():
        docs = docs.float()
    # Half-precision inputs are reduced in float32 (the norms of 16 sums of products lose digits in fp16).
    acc = torch.promote_types(docs.dtype, torch.float32)
    povs = povs.to(device=docs.device, dtype=acc)
    pov_unit = (povs / torch.linalg.vector_norm(povs, dim=1, keepdim=True)).to(docs.dtype)
    lead, d = docs.shape[:-1], docs.shape[-1]
    flat = docs.reshape(-1, d)  # a view when contiguous; a strided batch is copied once, as matmul needs
    sims = flat @ pov_unit.T
    out = torch.linalg.vector_norm(sims, dim=1, dtype=acc)
    if not assume_normalized:
        norms = torch.linalg.vector_norm(flat, dim=1, dtype=acc)
        out = torch.where(norms > 0, out / norms.clamp_min(torch.finfo(acc).tiny), 0.0)
    return out.to(docs.dtype).reshape(lead)


def cosine_scores(query_emb: ArrayT, doc_emb: Any, *, assume_normalized: bool = False) -> ArrayT:
    """Cosine similarity of each query with its documents: `query_emb` (..., d), `doc_emb` (..., n, d)
    -> (..., n); leading dimensions broadcast (one query against (n, d), or a batch against a batch)."""
    if _is_torch(query_emb) or _is_torch(doc_emb):
        return _cosine_torch(query_emb, doc_emb, assume_normalized)  # type: ignore[no-any-return]
    q = np.asarray(query_emb)
    docs = np.asarray(doc_emb)
    _check_shapes(docs.shape, q.shape, "query_emb")
    dtype = np.result_type(docs.dtype, q.dtype, np.float32)
    q = q.astype(dtype, copy=False)
    if not assume_normalized:
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    with idle_blas_threads():  # stage 2's products are small: see runner.retrieval.products
        out = np.matmul(docs, q[..., :, None])[..., 0]
    if not assume_normalized:
        norms = np.sqrt(np.einsum("...ij,...ij->...i", docs, docs))
        out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    return out.astype(dtype, copy=False)  # type: ignore[no-any-return]


def _cosine_torch(query_emb: Any, doc_emb: Any, assume_normalized: bool) -> Any:
    import torch

    docs = doc_emb if _is_torch(doc_emb) else torch.as_tensor(np.asarray(doc_emb))
    q = query_emb if _is_torch(query_emb) else torch.as_tensor(np.asarray(query_emb))
    _check_shapes(tuple(docs.shape), tuple(q.shape), "query_emb")
    if not docs.is_floating_point():
        docs = docs.float()
    q = q.to(device=docs.device, dtype=docs.dtype)
    if not assume_normalized:
        q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    out = torch.matmul(docs, q.unsqueeze(-1)).squeeze(-1)
    if not assume_normalized:
        norms = torch.linalg.vector_norm(docs, dim=-1, dtype=torch.float32).to(out.dtype)
        out = torch.where(norms > 0, out / norms.clamp_min(torch.finfo(out.dtype).tiny), 0.0)
    return out


# ---- stage-3 methods beside the notebook's `l2` (pov_scores above) ------------------------------------------
#
# `pov_scores` rewards a chunk for being close to the whole subject of the statements, so opposed POV sets
# rank chunks almost alike, and it ignores the question. `blend_scores` mixes it with the question's relevance;
# `contrast_scores` measures stance: closeness to this set's statements relative to reference sets. Both are
# vectorised over a batch of questions as pov_scores is, and make one pass over `doc_emb` as it does.

POV_METHODS = ("l2", "blend", "contrast")
"""The stage-3 scoring methods: `l2` is pov_scores (the notebook's), `blend` blend_scores, `contrast`
contrast_scores."""


def standardize(x: ArrayT) -> ArrayT:
    """z-scores along the last axis (each question's candidates): (x - mean) / std; 0 where all are equal.
    numpy or torch, as given."""
    if _is_torch(x):
        import torch

        t: Any = x
        acc = torch.promote_types(t.dtype, torch.float32)
        v = t.to(acc)
        centred = v - v.mean(dim=-1, keepdim=True)
        std = centred.pow(2).mean(dim=-1, keepdim=True).sqrt()
        z: Any = torch.where(std > 0, centred / std.clamp_min(torch.finfo(acc).tiny), 0.0)
        return z  # type: ignore[no-any-return]
    arr = np.asarray(x)
    arr = arr.astype(np.result_type(arr.dtype, np.float32), copy=False)
    centred = arr - arr.mean(axis=-1, keepdims=True)
    std = np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True))
    out: Any = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    return out  # type: ignore[no-any-return]


def blend(relevance: ArrayT, pov: Any, weight: float) -> ArrayT:
    """`(1 - weight) * z(relevance) + weight * z(pov)`, z-scored along the last axis (see blend_scores)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight must be in [0, 1], got {weight}")
    rel: Any = relevance
    other: Any = pov
    if tuple(rel.shape if hasattr(rel, "shape") else np.shape(rel)) != tuple(
        other.shape if hasattr(other, "shape") else np.shape(other)
    ):
        raise ValueError(f"relevance has shape {tuple(np.shape(rel))}, POV scores {tuple(np.shape(other))}")
    if _is_torch(rel) or _is_torch(other):
        import torch

        rel = rel if _is_torch(rel) else torch.as_tensor(np.asarray(rel))
        other = (other if _is_torch(other) else torch.as_tensor(np.asarray(other))).to(device=rel.device)
    else:
        rel, other = np.asarray(rel), np.asarray(other)
    out: Any = standardize(rel) * (1.0 - weight) + standardize(other) * weight
    return out  # type: ignore[no-any-return]


def blend_scores(
    doc_emb: ArrayT, pov_emb: Any, relevance: Any, *, weight: float = 0.5, assume_normalized: bool = False
) -> ArrayT:
    """Query relevance and POV score in one: `doc_emb` (..., n, d), `pov_emb` (p, d), `relevance` (..., n)
    (stage 2's scores of the same candidates) -> (..., n).

        blend(d) = (1 - weight) * z(relevance(d)) + weight * z(pov_score(d)),

    each z-scored over a question's n candidates (the last axis), so that a cosine, a cross-encoder logit and
    a POV score weigh alike whatever their scales. `weight` 0 keeps stage 2's order, 1 is `l2`'s order.
    """
    out: Any = blend(relevance, pov_scores(doc_emb, pov_emb, assume_normalized=assume_normalized), weight)
    return out  # type: ignore[no-any-return]


def contrast_scores(
    doc_emb: ArrayT, pov_emb: Any, reference_embs: Any, *, assume_normalized: bool = False
) -> ArrayT:
    """Stance: how much closer each document is to this POV set than to the reference sets.
    `doc_emb` (..., n, d), `pov_emb` (p, d), `reference_embs` a sequence of (r_i, d) -> (..., n):

        contrast(d) = mean_j cos(d, p_j) - mean_i mean_j cos(d, r_ij)
                    = cos-weighted d . (mean_j unit(p_j) - mean_i mean_j unit(r_ij)) / |d|.

    What every set shares (the subject) cancels out: a chunk close to the whole topic scores near 0, one that
    leans to this set's statements scores above 0, one that leans to the references' below. Linear in `d`,
    so the statements fold into one direction first and the batch costs one matrix-vector product: one pass
    over `doc_emb`, whatever the number of statements or reference sets."""
    refs = list(reference_embs)
    if not refs:
        raise ValueError("contrast needs at least one reference set of statements")
    if _is_torch(doc_emb):
        return _contrast_torch(doc_emb, pov_emb, refs, assume_normalized)  # type: ignore[no-any-return]
    docs = np.asarray(doc_emb)
    sets = [np.asarray(pov_emb), *(np.asarray(r) for r in refs)]
    for i, st in enumerate(sets):
        what = "pov_emb" if i == 0 else "a reference set"
        if st.ndim != 2 or not len(st):
            raise ValueError(f"{what} must have shape (p, d), got {st.shape}")
        _check_shapes(docs.shape, st.shape, what)
    dtype = np.result_type(docs.dtype, *(st.dtype for st in sets), np.float32)
    centroids = [
        (st / np.linalg.norm(st, axis=1, keepdims=True)).mean(axis=0, dtype=np.float64) for st in sets
    ]
    direction = centroids[0] - np.mean(centroids[1:], axis=0)
    lead, d = docs.shape[:-1], docs.shape[-1]
    flat = docs.reshape(-1, d)
    out = flat @ direction.astype(flat.dtype if flat.dtype in (np.float32, np.float64) else dtype)
    if not assume_normalized:
        norms = np.sqrt(np.einsum("ij,ij->i", flat, flat))
        out = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
    return out.astype(dtype, copy=False).reshape(lead)  # type: ignore[no-any-return]


def _contrast_torch(doc_emb: Any, pov_emb: Any, refs: list[Any], assume_normalized: bool) -> Any:
    import torch

    docs = doc_emb if doc_emb.is_floating_point() else doc_emb.float()
    acc = torch.promote_types(docs.dtype, torch.float32)
    sets = [st if _is_torch(st) else torch.as_tensor(np.asarray(st)) for st in [pov_emb, *refs]]
    for i, st in enumerate(sets):
        what = "pov_emb" if i == 0 else "a reference set"
        if st.ndim != 2 or not len(st):
            raise ValueError(f"{what} must have shape (p, d), got {tuple(st.shape)}")
        _check_shapes(tuple(docs.shape), tuple(st.shape), what)
    centroids = [
        (v / torch.linalg.vector_norm(v, dim=1, keepdim=True)).mean(dim=0)
        for v in (st.to(device=docs.device, dtype=torch.float64) for st in sets)
    ]
    direction = (centroids[0] - torch.stack(centroids[1:]).mean(dim=0)).to(docs.dtype)
    lead, d = docs.shape[:-1], docs.shape[-1]
    flat = docs.reshape(-1, d)
    out = (flat @ direction).to(acc)
    if not assume_normalized:
        norms = torch.linalg.vector_norm(flat, dim=1, dtype=acc)
        out = torch.where(norms > 0, out / norms.clamp_min(torch.finfo(acc).tiny), 0.0)
    return out.to(docs.dtype).reshape(lead)


def rank_desc(scores: Any) -> list[int]:
    """Indices from the highest score down; equal scores keep their input order (a stable sort), so a
    ranking is deterministic and ties go to the candidate the previous stage ranked higher."""
    arr = np.asarray(scores, dtype=np.float64)
    return [int(i) for i in np.argsort(-arr, kind="stable")]
