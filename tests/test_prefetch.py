"""Encoding the next batch while the current one generates (runner.generation.prefetch), through serve_batch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from runner.generation.backends.base import GenerationOut
from runner.generation.jobs import Job, classify_exception
from runner.generation.prefetch import Pipelined, Prefetcher
from runner.generation.worker import serve_batch
from runner.spec import Generation, Model

PARAMS = Generation(max_new_tokens=5, temperature=0.0)
PROMPTS = [
    "Will local-currency settlement weaken the dollar?",
    "What drives BRICS growth?",
    "Is Japan's alliance policy changing?",
    "How do sanctions shape trade?",
    "Who gains from new payment systems?",
    "Why?",
    "G7 and BRICS",
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Any:
    from runner.generation.backends.transformers import TransformersBackend

    return TransformersBackend(Model(name=str(tiny_model_dir), device="cpu", max_seq_length=256), None)


def _batches(size: int) -> list[list[Job]]:
    jobs = [Job(f"c{i}", p) for i, p in enumerate(PROMPTS)]
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def test_prefetched_batches_answer_exactly_as_plain_generate(backend: Any) -> None:
    assert isinstance(backend, Pipelined)
    batches = _batches(3)
    prefetch = Prefetcher(backend)
    for i, batch in enumerate(batches):
        ahead = batches[i + 1] if i + 1 < len(batches) else None
        served = serve_batch(backend, batch, PARAMS, prefetch, ahead)
        plain = backend.generate([j.prompt for j in batch], PARAMS)
        assert [r.cell_id for r in served] == [j.cell_id for j in batch]
        assert [r.output for r in served] == [o.text for o in plain]
        assert [r.metrics["prompt_tokens"] for r in served] == [float(o.prompt_tokens) for o in plain]
    assert prefetch.hits == len(batches) - 1  # every batch but the first was ready when it came


def test_a_wrong_hint_is_ignored(backend: Any) -> None:
    first, second, third = _batches(3)
    prefetch = Prefetcher(backend)
    serve_batch(backend, first, PARAMS, prefetch, ahead=third)  # then `second` comes instead
    served = serve_batch(backend, second, PARAMS, prefetch, ahead=None)
    assert prefetch.hits == 0
    assert [r.output for r in served] == [
        o.text for o in backend.generate([j.prompt for j in second], PARAMS)
    ]
    # The same cells with other prompts (an edited template under `pov serve`) do not match either.
    edited = [Job(j.cell_id, j.prompt + " Answer briefly.") for j in second]
    serve_batch(backend, second, PARAMS, prefetch, ahead=edited)
    served = serve_batch(backend, second, PARAMS, prefetch)
    assert prefetch.hits == 0 and served[0].output is not None


class Staged:
    """A backend double that reports whether another batch was encoded while this one generated."""

    device = "cpu"

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.cond = threading.Condition()
        self.encoded: list[tuple[str, ...]] = []
        self.generated: list[tuple[str, ...]] = []
        self.overlapped: list[bool] = []
        self.encoder_threads: list[str] = []
        self.wait_s = 10.0

    def encode_batch(self, prompts: list[str], params: Generation) -> list[str]:
        self.encoder_threads.append(threading.current_thread().name)
        if self.fail_on in prompts:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        with self.cond:
            self.encoded.append(tuple(prompts))
            self.cond.notify_all()
        return prompts

    def generate_encoded(self, prompts: list[str]) -> list[GenerationOut]:
        mine = tuple(prompts)

        def another_batch_encoded() -> bool:
            return any(b != mine and b not in self.generated for b in self.encoded)

        # Waits for the next batch's encoding, which can only arrive if it runs in parallel with this.
        with self.cond:
            self.overlapped.append(self.cond.wait_for(another_batch_encoded, timeout=self.wait_s))
        self.generated.append(mine)
        return [GenerationOut(p.upper(), 1, 1, 0.01, 100.0) for p in prompts]

    def generate(self, prompts: list[str], params: Generation) -> list[GenerationOut]:
        return self.generate_encoded(self.encode_batch(prompts, params))


def test_the_next_batch_is_encoded_while_this_one_generates() -> None:
    backend = Staged()
    prefetch = Prefetcher(backend)
    first, second = [Job("a", "one")], [Job("b", "two")]
    serve_batch(backend, first, PARAMS, prefetch, ahead=second)
    backend.wait_s = 0.5  # the last batch has nothing to encode meanwhile: do not wait long for it
    out = serve_batch(backend, second, PARAMS, prefetch, ahead=None)
    assert out[0].output == "TWO"
    assert backend.encoder_threads == ["MainThread", "pov-prefetch"]
    assert backend.overlapped == [True, False]
    assert prefetch.hits == 1


def test_an_encoding_error_in_the_thread_is_raised_by_its_own_batch() -> None:
    backend = Staged(fail_on="bad")
    prefetch = Prefetcher(backend)
    good, bad = [Job("a", "fine")], [Job("b", "bad")]
    assert serve_batch(backend, good, PARAMS, prefetch, ahead=bad)[0].output == "FINE"
    with pytest.raises(ValueError, match="cannot encode 'bad'") as caught:
        serve_batch(backend, bad, PARAMS, prefetch)
    assert classify_exception(caught.value) == ("exception", "ValueError: cannot encode 'bad'")


def test_a_backend_without_stages_generates_as_before() -> None:
    class Plain:
        device = "cpu"

        def generate(self, prompts: list[str], params: Generation) -> list[GenerationOut]:
            return [GenerationOut(p[::-1], 1, 1, 0.01, 100.0) for p in prompts]

    prefetch = Prefetcher(Plain())
    out = serve_batch(Plain(), [Job("a", "abc")], PARAMS, prefetch, ahead=[Job("b", "def")])
    assert out[0].output == "cba" and prefetch.hits == 0
