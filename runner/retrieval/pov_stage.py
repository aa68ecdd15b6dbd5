"""Stage 3 for a batch of keys: each key's stage-2 candidates scored by its POV set and scoring method.

Methods (runner.spec.POV_METHODS, computed by runner.retrieval.scoring):
- `l2`: `pov_scores`, the notebook's POV score; one matrix product per POV set for every key that needs it.
- `blend`: `blend` of stage 2's scores and the `l2` scores of the same candidates, z-scored per key.
- `contrast`: `contrast_scores` against the reference sets (the other POV sets the matrix uses, or those
  named); one product per (POV set, method).
Every statement is embedded by the reranker as a query, once per batch (and cached on disk).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from runner.errors import UserError
from runner.retrieval.scoring import blend, contrast_scores, cosine_scores, pov_scores
from runner.spec import DEFAULT_POV_SCORE, Experiment, PovScore, matrix_pov_sets

Candidates = tuple[list[str], list[float]]
"""Stage 2's chunk ids, best first, and their scores."""


def pov_method(exp: Experiment, name: str) -> PovScore:
    """The spec's scoring method called `name`; `l2` is the notebook's even where the spec declares none."""
    score = exp.spec.pov_scores.get(name)
    if score is not None:
        return score
    if name == DEFAULT_POV_SCORE:
        return PovScore()
    raise UserError(f"unknown POV score {name!r} (declared: {', '.join(exp.spec.pov_scores)})")


def reference_sets(exp: Experiment, pov: str, score: PovScore) -> list[str]:
    """The POV sets a contrast compares `pov` with: `others` (the matrix's other sets) or those named."""
    names = matrix_pov_sets(exp) if score.reference == "others" else list(score.reference)
    return [n for n in names if n != pov]


class PovStage:
    def __init__(self, exp: Experiment, embed_statements: Callable[[list[str]], np.ndarray]) -> None:
        self.exp = exp
        self._embed = embed_statements
        self._vectors: dict[str, np.ndarray] = {}

    def statements(self, pov: str) -> np.ndarray:
        if pov not in self._vectors:
            self._vectors[pov] = self._embed(self.exp.pov_sets[pov])
        return self._vectors[pov]

    def score(
        self,
        keys: Sequence[tuple[str, str]],
        candidates: Sequence[Candidates],
        doc_vec: dict[str, np.ndarray],
    ) -> list[np.ndarray]:
        """The stage-3 score of each candidate of each (POV set, method name) key, in candidate order."""
        methods = {name: pov_method(self.exp, name) for name in dict.fromkeys(s for _, s in keys)}
        # The POV score of every candidate of every key that needs it (l2 and blend), one product per set.
        l2: dict[str, dict[str, float]] = {}
        for pov in dict.fromkeys(p for p, s in keys if methods[s].method != "contrast"):
            docs = list(
                dict.fromkeys(
                    i
                    for (p, s), (ids, _) in zip(keys, candidates, strict=True)
                    if p == pov and methods[s].method != "contrast"
                    for i in ids
                )
            )
            l2[pov] = self._batch(docs, doc_vec, functools.partial(self._l2, pov))
        contrast: dict[tuple[str, str], dict[str, float]] = {}
        for pov, name in dict.fromkeys((p, s) for p, s in keys if methods[s].method == "contrast"):
            refs = [self.statements(r) for r in reference_sets(self.exp, pov, methods[name])]
            if not refs:
                raise UserError(
                    f"POV score {name!r} (contrast) has no reference set for POV set {pov!r}: the matrix uses no "
                    f"other POV set; name one in pov_scores.{name}.reference"
                )
            docs = list(
                dict.fromkeys(
                    i
                    for (p, s), (ids, _) in zip(keys, candidates, strict=True)
                    if (p, s) == (pov, name)
                    for i in ids
                )
            )
            contrast[(pov, name)] = self._batch(
                docs,
                doc_vec,
                functools.partial(self._contrast, pov, refs),
            )
        out = []
        for (pov, name), (ids, rel) in zip(keys, candidates, strict=True):
            score = methods[name]
            if score.method == "contrast":
                out.append(np.array([contrast[(pov, name)][i] for i in ids], dtype=np.float64))
            elif score.method == "blend":
                pov_part = np.array([l2[pov][i] for i in ids], dtype=np.float64)
                out.append(np.asarray(blend(np.asarray(rel, dtype=np.float64), pov_part, score.weight)))
            else:
                out.append(np.array([l2[pov][i] for i in ids], dtype=np.float64))
        return out

    def similarities(self, pov: str, ids: Sequence[str], doc_vec: dict[str, np.ndarray]) -> list[list[float]]:
        """Each chunk's cosine with each statement of the POV set (chunks x statements, small): what `l2` is
        the norm of, kept for the reader of a cell whatever its method."""
        if not ids:
            return []
        sims = cosine_scores(self.statements(pov), np.stack([doc_vec[i] for i in ids])[None, :, :]).T
        return [[float(x) for x in row] for row in sims]

    def _l2(self, pov: str, docs: np.ndarray) -> np.ndarray:
        return pov_scores(docs, self.statements(pov), assume_normalized=True)

    def _contrast(self, pov: str, refs: list[np.ndarray], docs: np.ndarray) -> np.ndarray:
        return contrast_scores(docs, self.statements(pov), refs, assume_normalized=True)

    @staticmethod
    def _batch(
        docs: list[str], doc_vec: dict[str, np.ndarray], fn: Callable[[np.ndarray], np.ndarray]
    ) -> dict[str, float]:
        if not docs:
            return {}
        scores = fn(np.stack([doc_vec[i] for i in docs]))
        return dict(zip(docs, (float(s) for s in scores), strict=True))
