"""What every generation backend provides: load a model once, then generate for batches of prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from runner.generation.jobs import Job, JobResult
    from runner.spec import Generation as GenerationParams
    from runner.spec import Limits, Model


@dataclass
class GenerationOut:
    """One prompt's answer and what it cost."""

    text: str
    prompt_tokens: int
    """Tokens fed to the model (after the chat template and any truncation)."""
    new_tokens: int
    """Tokens generated, up to and including the end-of-sequence token."""
    latency_s: float
    """From the start of the batch's generate call to the moment this prompt's answer was complete, where the
    backend can time each prompt (`batch_latency_s` set); else the wall time of the whole call, which every
    prompt of the batch shares (dividing it by the batch size would be no prompt's time either)."""
    tokens_per_s: float
    """new_tokens / latency_s."""
    prompt_truncated: bool = False
    """The prompt was longer than max_seq_length - max_new_tokens and lost its beginning."""
    batch_latency_s: float | None = None
    """Wall time of the whole generate call; None when the backend cannot time prompts one by one, and then
    `latency_s` is that batch time."""


@runtime_checkable
class Backend(Protocol):
    """Built as `backend_class(model.backend)(model_spec, device)`; loads the model in the constructor."""

    device: str

    def __init__(self, model: Model, device: str | None = None) -> None:
        """Load the model (on `device`, or the one `model.device` picks)."""
        ...

    def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationOut]:
        """Answer every prompt of one batch, in order."""
        ...

    def info(self) -> dict[str, float]:
        """Numbers about the loaded model (e.g. `model_memory_mb`), recorded with each cell."""
        ...


class RemoteBackend(Protocol):
    """A backend whose model runs in an inference server (registered with `remote=True`), built in the run's
    own process as `cls(model, limits, log_path, should_stop)`. It is itself the executor's handle on a worker
    (runner.generation.executors.pool.Worker): `start` makes the server answer (starting one where the backend
    manages it), `run_batch` sends one request per job and records each job's own outcome, crashes included,
    so that a failed request never fails the jobs beside it."""

    model: Model
    limits: Limits

    def __init__(
        self, model: Model, limits: Limits, log_path: Path, should_stop: Callable[[], bool] | None = None
    ) -> None: ...

    @property
    def alive(self) -> bool: ...

    def begin(self) -> None:
        """Start what takes long (a server's model load) without waiting for it."""
        ...

    def start(self) -> dict[str, float]:
        """Wait until the server answers; raise runner.generation.jobs.LoadFailed if it cannot."""
        ...

    def run_batch(
        self, jobs: list[Job], params: GenerationParams, timeout_s: float, ahead: list[Job] | None = None
    ) -> list[JobResult]:
        """One result per job, in the jobs' order; `ahead` (the next batch) may be sent meanwhile."""
        ...

    def stop(self) -> None:
        """Stop what `start` started (a managed server), gracefully."""
        ...

    def terminate(self) -> None:
        """Stop now (Ctrl-C): abandon the requests in flight."""
        ...


def prompt_budget(model: Model, params: GenerationParams) -> int:
    """Most prompt tokens that leave room for max_new_tokens inside max_seq_length."""
    budget = model.max_seq_length - params.max_new_tokens
    if budget < 1:
        raise ValueError(
            f"max_seq_length ({model.max_seq_length}) leaves no room for a prompt after max_new_tokens "
            f"({params.max_new_tokens}): raise the model's max_seq_length or lower generation.max_new_tokens"
        )
    return budget


def truncate_left(ids: list[int], budget: int, keep_first: int | None) -> tuple[list[int], bool]:
    """Keep the last `budget` tokens, where the question and the response marker are; a leading BOS
    (`keep_first`) stays in front because models go astray without it."""
    if len(ids) <= budget:
        return ids, False
    if keep_first is not None and ids and ids[0] == keep_first and budget > 1:
        return [ids[0], *ids[len(ids) - budget + 1 :]], True
    return ids[len(ids) - budget :], True
