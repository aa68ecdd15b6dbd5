"""Executors run model groups of jobs on workers and hand every result back to the parent.

Registered by name and imported lazily: `local` (one worker process per GPU, or one CPU worker) and `ray`
(Ray actors). Each is built by `make_executor`; each has `run(groups, params, on_result)` where `groups`
maps a model key to `(Model, [Job])` and `on_result` receives lists of `JobResult` in the parent's thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.spec import Spec

EXECUTORS: dict[str, str] = {
    "local": "runner.executors.local:LocalExecutor",
    "ray": "runner.executors.ray:RayExecutor",
}


def executor_class(name: str) -> Any:
    from runner.registry import load

    return load(EXECUTORS, name)


def make_executor(
    spec: Spec, kind: str | None = None, *, gpus: list[int] | None = None, address: str | None = None
) -> Any:
    """The executor a spec asks for (`executor.kind`), with command-line overrides applied.

    `local` is built as `LocalExecutor(gpus, limits)`; `ray` as `RayExecutor(config, limits)` where config is
    the spec's `executor:` section (spec.Executor) with `address`/`gpus` overrides applied."""
    config = spec.executor
    kind = kind or config.kind
    if kind not in EXECUTORS:
        from runner.errors import UserError

        raise UserError(f"unknown executor {kind!r} (known: {', '.join(EXECUTORS)})")
    if kind == "local":
        return executor_class("local")(gpus if gpus is not None else config.gpus, spec.limits)
    updates: dict[str, Any] = {}
    if address is not None:
        updates["address"] = address
    if gpus is not None:
        updates["gpus"] = gpus
    return executor_class(kind)(config.model_copy(update=updates), spec.limits)
