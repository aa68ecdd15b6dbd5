"""Encoding the next batch while the current one generates.

Before a batch reaches the GPU its prompts go through the chat template and the tokenizer, and the
padded tensors are built: a tenth of a second for 32 prompts of 1,400 tokens on the GPU machines, where
the tokenizer runs one text after another (Unsloth turns the tokenizers library's own parallelism off).
The tokenizer works in native code without holding the GIL, so a thread can do this for batch n+1 while
batch n generates. The driver sends the next batch's jobs along with each batch as a hint; the hint never
changes a result: a batch whose inputs were not prepared (the first one, or one after a crash reordered
the queue) is encoded when it runs, as before.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from runner.generation.jobs import Job
    from runner.spec import Generation


@runtime_checkable
class Encoded(Protocol):
    """What a Pipelined backend's `encode_batch` returns: at least the prompt length, in tokens, that every
    row of the batch is padded to."""

    width: int


@runtime_checkable
class Pipelined(Protocol):
    """A backend whose `generate` is `generate_encoded(encode_batch(...))`, so the two can be split."""

    def encode_batch(self, prompts: list[str], params: Generation) -> Any:
        """Everything before the model: template, tokenizer, padded CPU tensors. Touches no GPU."""
        ...

    def generate_encoded(self, encoded: Any) -> list[Any]:
        """Generate from what `encode_batch` returned; the same GenerationOuts as `generate`."""
        ...


def _key(jobs: list[Job], params: Generation) -> tuple[Any, ...]:
    # The prompt text too: under `pov serve` a later run may send the same cell ids with edited prompts.
    return (tuple((j.cell_id, j.prompt) for j in jobs), params.model_dump_json())


class Prefetcher:
    """Holds at most one batch being encoded ahead, in a thread."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend if isinstance(backend, Pipelined) else None
        self._thread: threading.Thread | None = None
        self._key: tuple[Any, ...] | None = None
        self._box: dict[str, Any] = {}
        self.hits = 0

    def start(self, jobs: list[Job] | None, params: Generation) -> None:
        """Begin encoding `jobs` (the batch expected next) unless the backend cannot split its work."""
        if self.backend is None or not jobs:
            return
        self._finish()
        backend, box = self.backend, {}
        prompts = [j.prompt for j in jobs]

        def work() -> None:
            # A failure is left for the batch itself: encoded again when it runs, which raises it there.
            with contextlib.suppress(Exception):
                box["encoded"] = backend.encode_batch(prompts, params)

        self._key, self._box = _key(jobs, params), box
        self._thread = threading.Thread(target=work, name="pov-prefetch", daemon=True)
        self._thread.start()

    def encode(self, jobs: list[Job], params: Generation) -> Any | None:
        """The inputs of `jobs`: the prefetched ones when they match, else encoded now; None when the
        backend cannot split its work (the caller then uses its plain `generate`)."""
        if self.backend is None:
            return None
        key = self._key
        encoded = self._finish()
        if encoded is not None and key == _key(jobs, params):
            self.hits += 1
            return encoded
        return self.backend.encode_batch([j.prompt for j in jobs], params)

    def _finish(self) -> Any | None:
        """Wait for the batch being encoded (the tokenizer is the backend's; one user at a time)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        box, self._box, self._key = self._box, {}, None
        return box.get("encoded")
