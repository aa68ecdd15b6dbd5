"""The notebook's generation loop, the baseline of benchmarks/bench_generation.py: one prompt at a time.

Runs in a fresh (spawned) process, so its CUDA memory and imports are its own; Unsloth is imported there
before transformers, as it must be.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def _one_by_one(
    model_dir: str,
    prompts: list[str],
    new_tokens: int,
    four_bit: str | None,
    queue: Any,
    device: str = "cuda:0",
) -> None:
    """The notebook's loop, in a fresh process: load once, then tokenize, generate and decode each prompt."""
    import torch

    cuda = device.startswith("cuda")

    if four_bit == "unsloth":
        import unsloth  # noqa: F401  (before transformers)
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=model_dir, max_seq_length=4096, dtype=None, load_in_4bit=True
        )
        FastLanguageModel.for_inference(model)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cuda else torch.float32}
        if four_bit:
            kwargs.update(
                quantization_config=BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
                ),
                device_map={"": "cuda:0"},
            )
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        if not four_bit:
            model = model.to(device)
        tok = AutoTokenizer.from_pretrained(model_dir)
    weight_bytes = float(model.get_memory_footprint())
    tokens = 0
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for prompt in prompts:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(device)
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
        tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    if cuda:
        torch.cuda.synchronize()
    queue.put(
        {
            "generate_s": time.perf_counter() - started,
            "tokens": tokens,
            "peak_alloc_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
            "weight_bytes": weight_bytes,
            "batch_size": 1,
            "new_tokens": new_tokens,
        }
    )


def one_by_one_pass(
    model_dir: Path, prompts: list[str], new_tokens: int, four_bit: str | None, device: str = "cuda:0"
) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_one_by_one, args=(str(model_dir), prompts, new_tokens, four_bit, queue, device)
    )
    proc.start()
    result = queue.get(timeout=3600)
    proc.join()
    return dict(result)
