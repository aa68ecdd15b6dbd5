"""How many Ray actors a run gets, and how its model groups are shared out over them.

One actor per GPU by default (`executor.num_gpus` each; a fraction lets small models share one). When there
are more actors than model groups, a group with many batches is cut into shards, whole batches each, so that
a 24-cell group on a 3-GPU cluster keeps 3 actors busy instead of one: each shard is a work item of its own
for the slot pool, and each actor loads its model once. Batches are cut exactly as one worker would cut them
(runner.generation.executors.pool.make_batches), so sharding changes no batch and no answer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from runner.generation.executors.pool import make_batches

if TYPE_CHECKING:
    from runner.generation.jobs import Groups, Job
    from runner.spec import Executor

SHARD_MARK = "#"
"""Shard keys are `<group key>#<n>` (n from 2): a worker's log file is named after its key."""


def slot_plan(config: Executor, nodes: list[dict[str, float]], n_work: int) -> tuple[int, float]:
    """(actors, GPUs per actor) for a cluster whose live nodes offer `nodes` (Ray resources each) and
    `n_work` work items (batches when groups may be split, else groups): as many actors as the nodes can
    hold at once, by GPUs and by the custom resources each actor asks for, never more than the work."""
    cluster_gpus = sum(float(r.get("GPU", 0.0)) for r in nodes)
    per_actor = config.num_gpus if cluster_gpus > 0 else 0.0
    if config.workers is not None:
        slots = config.workers
    elif per_actor > 0 or config.resources:
        slots = sum(_fits(config, per_actor, r) for r in nodes)
        if config.gpus is not None and per_actor > 0:
            slots = min(slots, math.floor(len(config.gpus) / per_actor + 1e-9))
    else:
        slots = 1
    return max(1, min(slots, n_work)), per_actor


def _fits(config: Executor, per_actor: float, resources: dict[str, float]) -> int:
    """How many actors one node holds at once."""
    fits = [math.floor(float(resources.get("GPU", 0.0)) / per_actor + 1e-9)] if per_actor > 0 else []
    fits += [
        math.floor(float(resources.get(k, 0.0)) / v + 1e-9) for k, v in config.resources.items() if v > 0
    ]
    return min(fits) if fits else 0


def n_batches(groups: Groups, batch_size: int) -> int:
    return sum(len(make_batches(jobs, batch_size)) for _, jobs in groups.values() if jobs)


def shard_counts(sizes: dict[str, int], n_slots: int) -> dict[str, int]:
    """Shards per group (sizes: batches per group) for `n_slots` actors: one each, then each spare actor
    to the group with the most batches per shard, while that is more than one batch."""
    counts = {key: 1 for key, n in sizes.items() if n > 0}
    spare = n_slots - len(counts)
    while spare > 0 and counts:
        key = max(counts, key=lambda k: (sizes[k] / counts[k], k))
        if sizes[key] <= counts[key]:
            break
        counts[key] += 1
        spare -= 1
    return counts


def split_groups(groups: Groups, n_slots: int, batch_size: int) -> Groups:
    """The groups with the large ones cut into shards of whole batches (dealt round-robin in prompt-length
    order, so shards get alike prompt lengths and a shard's batches are re-cut the same way)."""
    batched = {key: make_batches(jobs, batch_size) for key, (_, jobs) in groups.items() if jobs}
    counts = shard_counts({key: len(b) for key, b in batched.items()}, n_slots)
    out: dict[str, Any] = {}
    for key, (model, jobs) in groups.items():
        shards = counts.get(key, 1)
        if shards == 1:
            out[key] = (model, jobs)
            continue
        parts: list[list[Job]] = [[] for _ in range(shards)]
        for i, batch in enumerate(batched[key]):
            parts[i % shards].extend(batch)
        for n, part in enumerate(parts, start=1):
            out[key if n == 1 else f"{key}{SHARD_MARK}{n}"] = (model, part)
    return out
