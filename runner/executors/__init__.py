"""Executors run model groups of jobs on workers and hand every result back to the parent.

Registered by name and imported lazily: `local` (one worker process per GPU, or one CPU worker), `ray`
(Ray actors) and `serve` (the workers of a running `pov serve`, which stay loaded between runs). Each is built by `make_executor`; each has `run(groups, params, on_result)` where `groups`
maps a model key to `(Model, [Job])` and `on_result` receives lists of `JobResult` in the parent's thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from runner.spec import Spec

EXECUTORS: dict[str, str] = {
    "local": "runner.executors.local:LocalExecutor",
    "ray": "runner.executors.ray:RayExecutor",
    "serve": "runner.executors.serve:ServeExecutor",
}


def executor_class(name: str) -> Any:
    from runner.registry import load

    return load(EXECUTORS, name)


def make_executor(
    spec: Spec,
    kind: str | None = None,
    *,
    gpus: list[int] | None = None,
    address: str | None = None,
    state_dir: Path | None = None,
    auto_serve: bool = True,
) -> Any:
    """The executor a spec asks for (`executor.kind`), with command-line overrides applied.

    `local` is built as `LocalExecutor(gpus, limits)`, unless `auto_serve` and a `pov serve` is running for
    the project (`state_dir`) and no GPUs were named: then its warm workers are used. `ray` is built as
    `RayExecutor(config, limits)` where config is the spec's `executor:` section (spec.Executor) with
    `address`/`gpus` overrides applied; `serve` as `ServeExecutor(state_dir, limits)`."""
    config = spec.executor
    kind = kind or config.kind
    if kind not in EXECUTORS:
        from runner.errors import UserError

        raise UserError(f"unknown executor {kind!r} (known: {', '.join(EXECUTORS)})")
    if kind == "local":
        chosen = gpus if gpus is not None else config.gpus
        if auto_serve and chosen is None and state_dir is not None:
            from runner.serve import find_server

            info = find_server(state_dir)
            if info is not None:
                return executor_class("serve")(state_dir, spec.limits, info)
        return executor_class("local")(chosen, spec.limits)
    if kind == "serve":
        if state_dir is None:
            raise ValueError("the serve executor needs the project's state directory")
        return executor_class("serve")(state_dir, spec.limits)
    updates: dict[str, Any] = {}
    if address is not None:
        updates["address"] = address
    if gpus is not None:
        updates["gpus"] = gpus
    return executor_class(kind)(config.model_copy(update=updates), spec.limits)
