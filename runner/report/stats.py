"""Small statistics for the report: Wilson intervals for rates, percentiles, and bins for token counts."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float, float]:
    """Rate k/n with its Wilson score interval (lo, hi). Unlike the normal approximation it stays inside
    [0, 1] and is honest at 0/n and n/n, which small crash counts hit all the time. n=0 gives (nan, 0, 1)."""
    if n <= 0:
        return math.nan, 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # The bounds are exactly 0 at k=0 and 1 at k=n; pin them against rounding noise.
    lo = 0.0 if k == 0 else max(0.0, min(p, centre - half))
    hi = 1.0 if k == n else min(1.0, max(p, centre + half))
    return p, lo, hi


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bin_edges(values: Sequence[float], max_bins: int = 5) -> list[float]:
    """Edges of at most `max_bins` bins holding roughly equal numbers of values (quantiles), so a few long
    prompts do not leave most bins empty. Few distinct values get one bin each."""
    distinct = sorted(set(values))
    if not distinct:
        return []
    if len(distinct) <= max_bins:
        # One bin per value: edges halfway between neighbours.
        mids = [(a + b) / 2 for a, b in itertools.pairwise(distinct)]
        return [distinct[0], *mids, distinct[-1]]
    edges = [percentile(values, 100 * i / max_bins) for i in range(max_bins + 1)]
    out: list[float] = []
    for e in edges:
        e = float(round(e))
        if not out or e > out[-1]:
            out.append(e)
    out[0] = min(out[0], distinct[0])
    out[-1] = max(out[-1], distinct[-1])
    return out if len(out) > 1 else [distinct[0], distinct[-1]]


def bin_index(value: float, edges: Sequence[float]) -> int:
    """Which bin of `edges` holds `value` (bins are [lo, hi), the last one [lo, hi])."""
    for i in range(len(edges) - 2, -1, -1):
        if value >= edges[i]:
            return i
    return 0


def bin_labels(edges: Sequence[float], values: Sequence[float]) -> list[str]:
    """`lo–hi` by the smallest and largest value that fall in each bin (or the edges when it is empty)."""
    members: list[list[float]] = [[] for _ in range(max(len(edges) - 1, 0))]
    for v in values:
        members[bin_index(v, edges)].append(v)
    labels = []
    for i, m in enumerate(members):
        lo, hi = (min(m), max(m)) if m else (edges[i], edges[i + 1])
        labels.append(f"{lo:.0f}" if lo == hi else f"{lo:.0f}–{hi:.0f}")
    return labels
