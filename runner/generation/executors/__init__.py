"""Executors run a run's model groups of jobs on workers and hand every result back to the caller's thread.

Registered by name in `runner.registry.EXECUTORS` and imported only when picked: `local` (one worker process
per GPU, or one CPU worker), `ray` (Ray actors) and `serve` (the workers of a running `pov serve`, which stay
loaded between runs). `make_executor` picks one for a spec; the engine sees only the `Executor` protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runner.errors import UserError
from runner.registry import EXECUTORS

if TYPE_CHECKING:
    from runner.generation.jobs import Groups, JobResult
    from runner.spec import Generation, Model, Spec

__all__ = ["EXECUTORS", "Executor", "make_executor"]


class Executor(Protocol):
    """Where generation runs. `run` calls `on_result` in the calling thread only, so the tracker and the
    progress bar never see two threads."""

    def describe(self) -> str:
        """One line for the run's output: where generation happens."""
        ...

    def check(self) -> None:
        """Raise UserError if this executor cannot work here (GPUs named that are not visible, Ray not
        installed or its cluster not answering, no `pov serve` answering). Called before an execution is
        created, so it must be quick and start nothing that needs stopping."""
        ...

    def prestart(self, models: Mapping[str, Model], log_dir: Path | None = None) -> None:
        """Begin loading these models now, so imports and the model load overlap the run's own preparation.
        Workers write their stdout/stderr under `log_dir` unless the executor was given a folder of its own."""
        ...

    def run(self, groups: Groups, params: Generation, on_result: Callable[[list[JobResult]], None]) -> None:
        """Generate every job of every group; each result reaches `on_result` exactly once."""
        ...

    def shutdown(self) -> None:
        """Stop every worker begun for this run now (Ctrl-C, or an error in the caller)."""
        ...


def make_executor(
    spec: Spec,
    kind: str | None = None,
    *,
    gpus: list[int] | None = None,
    address: str | None = None,
    state_dir: Path | None = None,
    auto_serve: bool = True,
) -> Executor:
    """The executor a spec asks for (`executor.kind`), with command-line overrides applied.

    `local` is built as `LocalExecutor(gpus, limits, cpu_only=...)` (cpu_only: every model says
    `device: cpu`), unless `auto_serve` and a `pov serve` is running for
    the project (`state_dir`) and no GPUs were named: then its warm workers are used. `ray` is built as
    `RayExecutor(config, limits)` where config is the spec's `executor:` section with `address`/`gpus`
    overrides applied; `serve` as `ServeExecutor(state_dir, limits)`."""
    config = spec.executor
    kind = kind or config.kind
    if kind not in EXECUTORS:
        raise UserError(f"unknown executor {kind!r} (known: {', '.join(EXECUTORS.names())})")
    made: Any
    if kind == "local":
        chosen = gpus if gpus is not None else config.gpus
        if auto_serve and chosen is None and state_dir is not None:
            from runner.generation.server_info import find_server

            info = find_server(state_dir)
            if info is not None:
                made = EXECUTORS.load("serve")(state_dir, spec.limits, info)
                return made  # type: ignore[no-any-return]
        cpu_only = all(m.device == "cpu" for m in spec.models.values())
        made = EXECUTORS.load("local")(chosen, spec.limits, cpu_only=cpu_only)
        return made  # type: ignore[no-any-return]
    if kind == "serve":
        if state_dir is None:
            raise ValueError("the serve executor needs the project's state directory")
        made = EXECUTORS.load("serve")(state_dir, spec.limits)
        return made  # type: ignore[no-any-return]
    updates: dict[str, Any] = {}
    if address is not None:
        updates["address"] = address
    if gpus is not None:
        updates["gpus"] = gpus
    made = EXECUTORS.load(kind)(config.model_copy(update=updates), spec.limits)
    return made  # type: ignore[no-any-return]
