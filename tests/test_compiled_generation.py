"""`generation.compile: true`: the transformers backend decodes with a static KV cache and a torch.compile'd
forward (CUDA graphs on a GPU). On the CPU the same path compiles too; it must answer with exactly the greedy
tokens of the eager path, reuse its compiled graphs across prompt lengths, and be refused where it cannot
work (Unsloth, bitsandbytes 4-bit)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import OLD_QUICKSTART, OLD_QUICKSTART_HASH

from runner.errors import SpecError
from runner.spec import Generation, Model, expand, load_spec

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "experiments" / "base.yaml"
TINY_QUICKSTART_CELL_IDS = ("f2ca540ac6ae", "6dc4952864fa")
"""Its spec hash and first and last cell ids then: executions made before must keep resuming."""

WHY, SHORT, MEDIUM, LONGER, LONG = (
    "Why?",  # 18 tokens with the chat template
    "G7 and BRICS",  # 19
    "What do sanctions teach their targets?",  # 26
    "Tell me about local currency settlement and the dollar, and what the G7 answers with.",  # 37
    " ".join(["BRICS members settle more trade in local currencies."] * 6),  # 75
)
LONGEST_IN_BUCKET = LONGER + " And why do the BRICS members care so much?"  # 50


def _tokens(outs: list) -> list[tuple[str, int]]:  # type: ignore[type-arg]
    return [(o.text, o.new_tokens) for o in outs]


@pytest.mark.slow  # about 15 s: three small graphs traced on the CPU
def test_compiled_decoding_gives_the_eager_greedy_tokens_and_reuses_its_graphs(tiny_model_dir: Path) -> None:
    import torch._dynamo

    from runner.generation.backends.transformers import TransformersBackend

    # A fresh model: transformers remembers the longest static cache a model has had.
    backend = TransformersBackend(Model(name=str(tiny_model_dir), device="cpu", max_seq_length=256), None)
    eager = Generation(max_new_tokens=12, batch_size=4)
    compiled = eager.model_copy(update={"compile": True})
    four = [WHY, LONGER, SHORT, MEDIUM]  # needs 37 + 12 positions: the first quarter of 256
    three = [SHORT, LONGEST_IN_BUCKET, WHY]  # 50 + 12: other widths, same quarter; filled up to 4 rows
    alone = [LONG]  # 75 + 12: the second quarter, one row
    assert [len(backend.encode(p)) for p in (LONGER, LONGEST_IN_BUCKET, LONG)] == [37, 50, 75]
    want = [_tokens(backend.generate(batch, eager)) for batch in (four, three, alone)]

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    assert _tokens(backend.generate(four, compiled)) == want[0]
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # the decode step really went through torch.compile
    assert _tokens(backend.generate(three, compiled)) == want[1]
    assert counters["stats"]["unique_graphs"] == graphs  # no graph for other prompt widths or fewer rows
    assert _tokens(backend.generate(alone, compiled)) == want[2]
    assert counters["stats"]["unique_graphs"] > graphs  # a new shape (one row, a longer cache) compiles


def test_cache_lengths_and_rows_come_from_a_few_buckets() -> None:
    from runner.generation.backends.compiled import cache_length, padded_rows

    # Quarters of max_seq_length: at most four cache shapes per row count, never shorter than needed.
    assert [cache_length(n, 2048) for n in (1, 512, 513, 1500, 2048)] == [512, 512, 1024, 1536, 2048]
    assert cache_length(100, 250) == 126  # quarters rounded up: 63 per quarter
    # One row stays alone (a crashed batch's cells are retried one by one); short batches fill up.
    assert [padded_rows(n, 8) for n in (1, 2, 7, 8)] == [1, 8, 8, 8]


def test_compile_leaves_existing_spec_hashes_and_cell_ids_alone(tmp_path: Path) -> None:
    for part in ("data/brics", "templates"):
        shutil.copytree(REPO / part, tmp_path / part)
    (tmp_path / "experiments").mkdir()
    shutil.copy2(REPO / "experiments" / "base.yaml", tmp_path / "experiments" / "base.yaml")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    spec = tmp_path / "experiments" / "tiny_quickstart.yaml"
    spec.write_text(OLD_QUICKSTART)

    plain = load_spec(spec)
    assert plain.spec_hash == OLD_QUICKSTART_HASH
    cells = expand(plain)
    assert (cells[0].id, cells[-1].id) == TINY_QUICKSTART_CELL_IDS
    on = load_spec(spec, ["generation.compile=true"])
    assert on.spec_hash != plain.spec_hash
    assert {c.id for c in expand(on)}.isdisjoint({c.id for c in cells})


def _spec(tmp_path: Path, models: str, generation: str = "{compile: true}") -> Path:
    spec = tmp_path / "experiments" / "compile.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        textwrap.dedent(
            f"""\
            name: compile
            extends: {BASE}
            models: {models}
            generation: {generation}
            matrix: {{model: all}}
            """
        )
    )
    return spec


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{backend: unsloth, name: some/model, load_in_4bit: true}", "backend transformers"),
        ("{backend: transformers, name: some/model, load_in_4bit: true}", "4-bit"),
    ],
)
def test_compile_is_refused_where_it_cannot_work(tmp_path: Path, model: str, message: str) -> None:
    spec = _spec(tmp_path, f"{{big: {model}}}")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    text = str(err.value)
    assert "generation.compile" in text and message in text
    assert f"{spec.name}:" in text  # points at the spec file
    # Unused models do not matter; the same models without compile are fine.
    load_spec(spec, ["generation.compile=false"])
    load_spec(spec, ["matrix.model=[tiny]"])
