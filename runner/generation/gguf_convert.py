"""A GGUF checkpoint turned into an ordinary transformers folder, once.

transformers reads a GGUF file (`from_pretrained(dir, gguf_file=...)`) but keeps nothing it can save: its
weights stay tied to the file and `save_pretrained` refuses them. So the config and tokenizer are read from
the GGUF's metadata, the model is built empty from that config, and the dequantized tensors are loaded into
it; the folder written then loads offline through the same code path as any checkpoint. Weights are saved in
float32: a 4-bit block's `d * q + m` is exact there, so the folder answers as the GGUF does, where bfloat16
would round it.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

CONVERTER_VERSION = 1
"""Bump when the converter's output changes: the cache key holds it, so a new converter gives a new folder."""


def convert_gguf(gguf: Path, out: Path, *, provenance: dict[str, Any]) -> None:
    """Write the transformers folder of `gguf` into the existing, empty folder `out`; `provenance` (what the
    file is and where it came from) goes into `out/pov_build.json`, written last."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Its tqdm bar ignores transformers' switch for bars; in a run's log it would only be noise.
    with contextlib.redirect_stderr(io.StringIO()):
        parsed = load_gguf_checkpoint(
            str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
        )
    missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{gguf.name}: the GGUF's tensors do not fit {type(model).__name__} "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.tie_weights()
    model.eval()
    if tokenizer.pad_token_id is None:  # batched generation pads on the left with it
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "pov_build.json").write_text(
        json.dumps({**provenance, "converter_version": CONVERTER_VERSION}, indent=1, sort_keys=True) + "\n"
    )
