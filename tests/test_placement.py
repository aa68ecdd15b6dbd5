"""How a Ray run's model groups are shared out over actors (runner.generation.executors.placement): no Ray
needed. Shards keep the batches one actor would cut, so the answers cannot change."""

from __future__ import annotations

from runner.generation import Job
from runner.generation.executors.placement import shard_counts, slot_plan, split_groups
from runner.generation.executors.pool import make_batches
from runner.spec import Executor, Model

MODEL = Model(backend="transformers", name="m")


def _jobs(n: int, prefix: str = "c", seeds: tuple[int | None, ...] = (None,)) -> list[Job]:
    # Prompt lengths out of order and with ties, as real prompts come.
    return [Job(f"{prefix}{s}-{i}", "x" * ((i * 7) % 11 + 1), seed=s) for s in seeds for i in range(n)]


def _batches_of(groups: dict[str, tuple[Model, list[Job]]], size: int) -> list[tuple[str, ...]]:
    return sorted(
        tuple(j.cell_id for j in b) for _, jobs in groups.values() for b in make_batches(jobs, size)
    )


def test_a_24_cell_group_on_3_slots_is_cut_into_3_shards_of_the_same_batches() -> None:
    jobs = _jobs(24)
    split = split_groups({"tiny": (MODEL, jobs)}, n_slots=3, batch_size=8)
    assert sorted(split) == ["tiny", "tiny#2", "tiny#3"]
    assert [len(j) for _, j in split.values()] == [8, 8, 8]
    assert _batches_of(split, 8) == _batches_of({"tiny": (MODEL, jobs)}, 8)


def test_shards_keep_batches_with_repeats_ties_and_a_short_last_batch() -> None:
    jobs = _jobs(13, seeds=(None, 7))
    for slots in (2, 3, 5):
        split = split_groups({"g": (MODEL, jobs)}, n_slots=slots, batch_size=4)
        assert _batches_of(split, 4) == _batches_of({"g": (MODEL, jobs)}, 4)
        assert sorted(j.cell_id for _, js in split.values() for j in js) == sorted(j.cell_id for j in jobs)


def test_spare_actors_go_to_the_groups_with_most_batches() -> None:
    assert shard_counts({"big": 12, "small": 1}, 4) == {"big": 3, "small": 1}
    assert shard_counts({"a": 2, "b": 2}, 8) == {"a": 2, "b": 2}  # never a shard without a batch
    assert shard_counts({"a": 5, "b": 5, "c": 5}, 2) == {"a": 1, "b": 1, "c": 1}


def test_actors_counted_per_node_by_gpus_and_custom_resources() -> None:
    nodes = [{"CPU": 4, "GPU": 2, "box": 1}, {"CPU": 4, "GPU": 1}, {"CPU": 4}]
    assert slot_plan(Executor(kind="ray"), nodes, 100) == (3, 1.0)
    assert slot_plan(Executor(kind="ray", num_gpus=0.5), nodes, 100) == (6, 0.5)
    assert slot_plan(Executor(kind="ray", resources={"box": 1}), nodes, 100) == (1, 1.0)
    assert slot_plan(Executor(kind="ray"), nodes, 2) == (2, 1.0)  # never more actors than work
    assert slot_plan(Executor(kind="ray", workers=5), nodes, 100) == (5, 1.0)
    assert slot_plan(Executor(kind="ray"), [{"CPU": 8}], 10) == (1, 0.0)  # no GPU anywhere: one CPU actor
