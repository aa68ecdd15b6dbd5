"""The transformers backend on the CPU with the tiny Llama; the unsloth backend's guards."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.generation.backends.base import GenerationOut, prompt_budget, truncate_left
from runner.spec import Generation, Model

LONG = " ".join(
    ["BRICS members settle more trade in local currencies while the G7 answers with investment."] * 40
)


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from runner.generation.backends.transformers import TransformersBackend

    return TransformersBackend(Model(name=str(tiny_model_dir), device="cpu", max_seq_length=256), None)


def test_loads_on_the_cpu_with_the_chat_template(backend) -> None:  # type: ignore[no-untyped-def]
    assert backend.device == "cpu"
    assert backend.use_chat_template  # chat_template: None means "when the tokenizer has one"
    rendered = backend.render("What now?")
    assert rendered.startswith("<s>[INST] What now? [/INST]")
    ids = backend.encode("What now?")
    assert ids[0] == backend.tokenizer.bos_token_id and ids.count(backend.tokenizer.bos_token_id) == 1
    assert backend.tokenizer.padding_side == "left"
    assert backend.info()["model_memory_mb"] > 0


def test_greedy_batches_answer_as_each_prompt_would_alone(backend) -> None:  # type: ignore[no-untyped-def]
    params = Generation(max_new_tokens=6, temperature=0.0)
    prompts = ["Tell me about local currency settlement and the dollar.", "Why?", "G7 and BRICS"]
    batched = backend.generate(prompts, params)
    alone = [backend.generate([p], params)[0] for p in prompts]
    assert [o.text for o in batched] == [o.text for o in alone]
    assert [o.new_tokens for o in batched] == [o.new_tokens for o in alone]
    for p, out in zip(prompts, batched, strict=True):
        assert isinstance(out, GenerationOut)
        assert out.prompt_tokens == len(backend.encode(p))  # padding is not counted
        assert 1 <= out.new_tokens <= 6
        assert out.latency_s > 0 and out.tokens_per_s == pytest.approx(out.new_tokens / out.latency_s)
        assert not out.prompt_truncated
    assert len({o.latency_s for o in batched}) == 1  # one generate call for the batch


def test_min_new_tokens_fixes_the_length(backend) -> None:  # type: ignore[no-untyped-def]
    outs = backend.generate(["a", "b c d e f"], Generation(max_new_tokens=7, min_new_tokens=7))
    assert [o.new_tokens for o in outs] == [7, 7]


def test_long_prompts_lose_their_beginning_and_say_so(backend) -> None:  # type: ignore[no-untyped-def]
    params = Generation(max_new_tokens=16)
    prompt = LONG + " ### RESPONSE:"
    full = backend.encode(prompt)
    budget = prompt_budget(backend.spec, params)
    assert budget == 256 - 16 and len(full) > budget
    out = backend.generate([prompt, "short"], params)
    assert out[0].prompt_truncated and out[0].prompt_tokens == budget
    assert not out[1].prompt_truncated
    kept, truncated = truncate_left(full, budget, backend.tokenizer.bos_token_id)
    assert truncated and kept[0] == full[0] and kept[1:] == full[len(full) - budget + 1 :]
    assert backend.tokenizer.decode(kept).endswith("[/INST]")  # the end of the prompt is what stays


def test_truncate_left() -> None:
    assert truncate_left([1, 2, 3], 5, 1) == ([1, 2, 3], False)
    assert truncate_left([1, 5, 6, 7, 8], 3, 1) == ([1, 7, 8], True)
    assert truncate_left([9, 5, 6, 7, 8], 3, 1) == ([6, 7, 8], True)
    assert truncate_left([1, 5, 6], 1, 1) == ([6], True)


def test_no_room_for_a_prompt_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_seq_length"):
        prompt_budget(Model(name="x", max_seq_length=64), Generation(max_new_tokens=64))


def test_seeded_sampling_repeats_and_seeds_differ(backend) -> None:  # type: ignore[no-untyped-def]
    prompts = ["The dollar", "Alliances"]

    def sample(seed: int) -> list[str]:
        return [
            o.text
            for o in backend.generate(
                prompts, Generation(max_new_tokens=8, min_new_tokens=8, temperature=1.0, seed=seed)
            )
        ]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    greedy = [o.text for o in backend.generate(prompts, Generation(max_new_tokens=8, min_new_tokens=8))]
    assert sample(1) != greedy


def test_chat_template_can_be_turned_off_or_required(tiny_model_dir: Path, tmp_path: Path) -> None:
    from runner.generation.backends.transformers import TransformersBackend

    raw = TransformersBackend(Model(name=str(tiny_model_dir), device="cpu", chat_template=False))
    assert raw.render("Hi") == "Hi"
    assert raw.encode("Hi")[0] == raw.tokenizer.bos_token_id  # the tokenizer adds BOS itself
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    auto = TransformersBackend(Model(name=str(bare), device="cpu"))
    assert not auto.use_chat_template and auto.render("Hi") == "Hi"
    with pytest.raises(RuntimeError, match="no chat template"):
        TransformersBackend(Model(name=str(bare), device="cpu", chat_template=True))


def test_cpu_refuses_4bit_and_cuda(tiny_model_dir: Path) -> None:
    import torch

    from runner.generation.backends.transformers import TransformersBackend, pick_device

    with pytest.raises(RuntimeError, match="load_in_4bit needs a CUDA GPU"):
        TransformersBackend(Model(name=str(tiny_model_dir), device="cpu", load_in_4bit=True))
    assert pick_device("cpu", "cuda:0") == "cpu"
    assert pick_device("auto", "cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            pick_device("cuda", None)


def test_unsloth_needs_a_gpu_and_comes_before_transformers(tiny_model_dir: Path) -> None:
    import torch
    import transformers  # noqa: F401  (this process has it: unsloth would come too late)

    from runner.generation.backends.unsloth import UnslothBackend, preimport

    if "unsloth" not in sys.modules:
        with pytest.raises(RuntimeError, match="before transformers"):
            preimport()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            UnslothBackend(Model(backend="unsloth", name=str(tiny_model_dir)), None)


def test_missing_unsloth_names_the_extra() -> None:
    pytest.importorskip("torch")
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('unsloth') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    if probe.stdout.strip() != "True":
        pytest.skip("unsloth is installed here")
    run = subprocess.run(
        [sys.executable, "-c", "from runner.generation.backends.unsloth import preimport; preimport()"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode != 0
    assert "pov-runner[gpu]" in run.stderr


def test_model_revision_follows_the_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    from runner.generation import model_revision
    from runner.spec import Model

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    revision = model_revision(Model(name=str(copy)))
    assert revision == model_revision(Model(name=str(tiny_model_dir))), "same files, same revision"
    assert revision.startswith("sha256:")
    state = tmp_path / "state"
    assert model_revision(Model(name=str(copy)), state) == revision, "the hash cache changes nothing"
    assert (state / "cache" / "file_hashes.json").is_file()
    with (copy / "config.json").open("a") as fh:
        fh.write(" ")
    assert model_revision(Model(name=str(copy)), state) != revision, (
        "an edited file is seen through the cache"
    )
    assert model_revision(Model(name="meta-llama/Llama-3-8B", revision="abc123")) == "abc123"
    assert model_revision(Model(name="meta-llama/Llama-3-8B")) == "unpinned"


def _stop_token_for_different_lengths(
    backend: Any, prompts: list[str], params: Generation
) -> tuple[int, list[int]]:
    """A token of the tiny model's greedy answers that, taken as the end-of-sequence token, stops the rows of
    this batch at different steps (the tiny model never writes its own EOS): the token and each row's length."""
    enc = backend.encode_batch(prompts, params)
    out = backend.model.generate(
        input_ids=enc.input_ids, attention_mask=enc.mask, generation_config=backend._generation_config(params)
    )
    answers = out[:, enc.width :].tolist()
    n = params.max_new_tokens
    best: tuple[int, int, list[int]] = (0, -1, [])
    for token in sorted({t for row in answers for t in row} - {backend.tokenizer.pad_token_id}):
        lengths = [row.index(token) + 1 if token in row else n for row in answers]
        if (spread := len(set(lengths))) > best[0]:
            best = (spread, token, lengths)
    return best[1], best[2]


def test_each_row_of_a_batch_is_timed_on_its_own(backend) -> None:  # type: ignore[no-untyped-def]
    prompts = [
        "Tell me about local currency settlement and the dollar.",
        "Why?",
        "G7 and BRICS",
        "What is BRICS?",
        "a",
        "b c d e f",
        "Summarize the trade.",
        "Who leads?",
    ]
    params = Generation(max_new_tokens=32)
    stop, lengths = _stop_token_for_different_lengths(backend, prompts, params)
    assert len(set(lengths)) >= 3, "the batch's rows must stop at different steps"
    eos = backend.eos_ids
    backend.eos_ids = {stop}  # what a model's own end-of-sequence token does, at steps this test knows
    try:
        outs = backend.generate(prompts, params)
    finally:
        backend.eos_ids = eos
    assert [o.new_tokens for o in outs] == lengths
    assert len({o.latency_s for o in outs}) == len(set(lengths)), "one time per step at which rows stopped"
    batch = outs[0].batch_latency_s
    assert batch is not None and batch > 0
    assert all(o.batch_latency_s == batch for o in outs), "one generate call, one batch time"
    for o in outs:
        assert 0 < o.latency_s <= batch
        assert o.tokens_per_s == pytest.approx(o.new_tokens / o.latency_s)
    # A row that stopped earlier was done earlier; rows that stopped at the same step share its time.
    by_length = sorted(outs, key=lambda o: o.new_tokens)
    for a, b in itertools.pairwise(by_length):
        assert (a.latency_s < b.latency_s) if a.new_tokens < b.new_tokens else (a.latency_s == b.latency_s)
    # The longest row ran until the last step: its time is the batch's, less what generate does after it.
    assert by_length[-1].latency_s >= 0.5 * batch


def test_row_latencies_fall_back_to_the_batch_when_steps_were_not_seen() -> None:
    from runner.generation.backends.transformers import row_latencies

    assert row_latencies([0.1, 0.2, 0.3], [1, 3, 2], 0.35) == [0.1, 0.3, 0.2]
    assert row_latencies([0.1, 0.2, 0.5], [3], 0.4) == [0.4], "never past the batch's own time"
    # A generate that never called the clock (or called it for fewer steps): no row is guessed.
    assert row_latencies([], [2, 3], 1.0) == [None, None]
    assert row_latencies([0.1, 0.2], [2, 3], 1.0) == [None, None]
