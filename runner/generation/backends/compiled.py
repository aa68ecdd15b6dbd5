"""Decoding with a static KV cache and a compiled forward (`generation.compile: true`, transformers backend).

transformers does the compiling itself: with `cache_implementation="static"` and a `compile_config`,
`generate` runs the prefill eagerly and every decode step through `torch.compile(model.__call__)`
(`mode="reduce-overhead"` on a GPU: CUDA graphs, so a step is one graph launch instead of hundreds of kernel
launches from Python). Both the GPU machine's transformers 5.17 and 5.24 work this way.

What a compiled graph is specialised to, and so what must come in few shapes for the graphs to be reused
instead of recompiled (each recompile costs seconds to minutes, and torch.compile gives up after 8 per
function and runs eagerly):

- the prompt width: nothing. The prefill is eager, and a decode step sees one new token per row plus the
  cache, so prompts are never padded beyond the longest of their batch;
- the cache length: a static cache holds every position of the generation. Its length is rounded up to a
  quarter, half, three quarters or all of the model's max_seq_length (`cache_length`): at most four shapes,
  and at most a quarter of max_seq_length attended in vain. transformers never shrinks the cache of a model
  (a later, shorter batch reuses the longer cache), so once the longest batch has run no shape is new;
- the rows: a batch of 2..batch_size prompts is filled up to batch_size with copies of its last prompt
  (`padded_rows`), whose answers are dropped; a lone prompt stays alone, because the executor retries a
  crashed batch one prompt at a time to find which prompt crashes on its own, and filling it up would
  crash it again.

So a run compiles at most 2 x 4 decode graphs, and usually two or three.
"""

from __future__ import annotations

from typing import Any

QUARTERS = 4
"""Cache lengths per max_seq_length: its quarters."""


def cache_length(needed: int, max_seq_length: int) -> int:
    """Static cache length for a batch that needs `needed` positions (longest prompt + max_new_tokens): the
    next quarter of max_seq_length."""
    quarter = -(-max_seq_length // QUARTERS)
    return min(max_seq_length, -(-needed // quarter) * quarter) if needed <= max_seq_length else needed


def padded_rows(n: int, batch_size: int) -> int:
    """Rows a batch of `n` prompts is decoded with: one alone, else at least batch_size."""
    return 1 if n == 1 else max(n, batch_size)


def compile_config(device: str) -> Any:
    """transformers' `CompileConfig` for `device`. On a GPU: inductor with CUDA graphs. On the CPU (tests,
    dry runs): `aot_eager`, which captures the same graphs with the same static shapes and guards (so the
    same reuse and recompiles) and runs them with eager kernels; inductor would spend minutes building C++
    kernels on a small machine for a path whose speed only matters on a GPU. transformers compiles off the
    accelerators only when asked explicitly (`_compile_all_devices`)."""
    from transformers import CompileConfig

    if device.startswith("cuda"):
        return CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead")
    config = CompileConfig(fullgraph=False, dynamic=False, backend="aot_eager", mode="default")
    config._compile_all_devices = True  # type: ignore[assignment]  # declared None in transformers
    return config
