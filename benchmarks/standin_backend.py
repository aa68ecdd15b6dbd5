"""A generation backend that stands in for a GPU where there is none: it answers a batch after sleeping
`POV_STANDIN_S_PER_TOKEN` seconds per new token, as a host waits on its GPU's decode steps, using no CPU.
Loaded by the benchmarks as `backend: standin_backend:StandinBackend` (this folder on the actors' path)."""

from __future__ import annotations

import os
import time
from typing import Any


class StandinBackend:
    def __init__(self, model: Any, device: str | None = None) -> None:
        self.device = device or "cpu"
        self.name = model.name
        self.per_token = float(os.environ.get("POV_STANDIN_S_PER_TOKEN", "0.05"))

    def generate(self, prompts: list[str], params: Any) -> list[Any]:
        from runner.generation.backends.base import GenerationOut

        started = time.perf_counter()
        time.sleep(self.per_token * params.max_new_tokens)
        took = time.perf_counter() - started
        return [
            GenerationOut(
                " ".join(p.split()[-3:]),
                len(p.split()),
                params.max_new_tokens,
                took,
                params.max_new_tokens / took,
            )
            for p in prompts
        ]

    def info(self) -> dict[str, float]:
        return {"worker_pid": float(os.getpid())}
