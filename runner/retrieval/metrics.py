"""What each retrieval stage did, per (question, POV set, k schedule, scoring method): the numbers a researcher
needs to see whether the POV stage kept the question's relevant chunks, picked chunks of its own stance, and
spent slots on boilerplate or on chunks the embedder read only in part.

- `relevance_kept`: the share of stage 3's chunks that are among stage 2's first k3, the question's own top
  (1: the POV stage changed nothing but the order; 0: it replaced every one).
- `best_match_rank`: where stage 2's best chunk ended in stage 3's order, 1-based over all k2 candidates
  (above k3: the best match to the question was dropped).
- `stance_specificity`: 1 - the mean Jaccard overlap of this POV set's final chunks with each other POV set's
  (those the matrix uses; same question, k schedule and method): 0 when every set picks the same chunks, 1
  when none shares one. Absent when there is no other set.
- `stage{n}_boilerplate_share`: the share of stage n's chunks that are mostly boilerplate
  (runner.retrieval.chunking.is_boilerplate_chunk; with `drop_boilerplate` on, only what the rules missed).
- `stage{n}_truncated`: how many of stage n's chunks are longer than the window of the embedder whose vectors
  scored stages 2 and 3 (absent when that embedder cannot count tokens locally).

Names here are the run stage's metric names; runner.tracking.schema lists them for MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RELEVANCE_KEPT = "relevance_kept"
BEST_MATCH_RANK = "best_match_rank"
STANCE_SPECIFICITY = "stance_specificity"
STAGE_BOILERPLATE_SHARE = "stage{n}_boilerplate_share"
STAGE_TRUNCATED = "stage{n}_truncated"
RETRIEVAL_METRICS = (
    RELEVANCE_KEPT,
    BEST_MATCH_RANK,
    STANCE_SPECIFICITY,
    STAGE_BOILERPLATE_SHARE,
    STAGE_TRUNCATED,
)


def relevance_kept(query_order: Sequence[str], final: Sequence[str]) -> float:
    """Share of `final` among the first len(final) of stage 2's order."""
    if not final:
        return 0.0
    top = set(query_order[: len(final)])
    return sum(i in top for i in final) / len(final)


def best_match_rank(query_order: Sequence[str], pov_order: Sequence[str]) -> float:
    """1-based rank of stage 2's first chunk in stage 3's full order (over every stage-2 candidate)."""
    return float(list(pov_order).index(query_order[0]) + 1) if query_order else 0.0


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def stance_specificity(final: Sequence[str], others: Sequence[Sequence[str]]) -> float | None:
    """1 - mean Jaccard overlap with each other set's final chunks; None without another set."""
    if not others:
        return None
    return 1.0 - sum(jaccard(final, o) for o in others) / len(others)


def stage_shares(
    stages: Sequence[Sequence[str]],
    boilerplate: Mapping[str, bool],
    too_long: Mapping[str, bool] | None,
) -> dict[str, float]:
    """The boilerplate share and truncated count of each stage's chunk ids (stage 1 first)."""
    out: dict[str, float] = {}
    for n, ids in enumerate(stages, 1):
        if ids:
            out[STAGE_BOILERPLATE_SHARE.format(n=n)] = sum(boilerplate[i] for i in ids) / len(ids)
        if too_long is not None:
            out[STAGE_TRUNCATED.format(n=n)] = float(sum(too_long[i] for i in ids))
    return out
