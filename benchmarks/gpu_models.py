"""Models for benchmarks/gpu_run.py, built where they run (the GPU machine downloads nothing).

- `build_nemo`: a Mistral-Nemo-12B-shaped model with random weights: the architecture of
  mistralai/Mistral-Nemo-Base-2407's config.json (the Instruct model's is the same: hidden 5120, 40 layers,
  32 heads of 128 (so attention is 4096 wide, not 5120), 8 KV heads, MLP 14336, vocab 131072, RoPE theta
  1e6, 128k positions, no sliding window, untied embeddings), built directly on the GPU in bfloat16 and
  saved as safetensors, which Unsloth loads in 4-bit as it loads any checkpoint. The tokenizer is the one
  runner.generation.tinymodel trains on the corpus (a few thousand tokens); the embedding keeps all 131072
  rows, so the model weighs and computes what the real one does.
- `build_embedder`: a random-weight BERT sentence-transformer (mean pooling) over that tokenizer, for the
  crash run's retrieval and checks where all-MiniLM-L6-v2's 87 MB cannot travel with the rest (64 MiB in all
  per command). Rankings are then arbitrary but the prompts keep their real shape: k3 corpus chunks of up to
  180 words each, so prompt lengths, and the memory they take, are what the real retrieval gives.

Both write into a temporary folder and rename it into place, so a killed build leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

NEMO = {
    "hidden_size": 5120,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 14336,
    "vocab_size": 131072,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "max_position_embeddings": 128_000,
    "rms_norm_eps": 1e-5,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
"""mistralai/Mistral-Nemo-Base-2407's config.json, as read from the hub's file."""

TINY_NEMO = {
    **NEMO,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TINY_NEMO.update(head_dim=16, intermediate_size=128)
"""The dry run's stand-in: Nemo's layout (GQA, a head_dim of its own, the 131072-row vocabulary), tiny."""

MODEL_FILES = ("config.json", "generation_config.json", "pov_build.json")


def _fresh(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))


def _place(tmp: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def corpus_tokenizer(work: Path, vocab: int) -> Any:
    """The tokenizer runner.generation.tinymodel trains on data/brics (byte-level BPE, [INST] chat template),
    taken from a throwaway tiny build."""
    from transformers import AutoTokenizer

    from runner.generation import TinyDims, build_tiny

    source = build_tiny(work / "tokenizer-source", seed=0, dims=TinyDims(vocab=vocab))
    return AutoTokenizer.from_pretrained(source), source


def _copy_tokenizer(source: Path, dest: Path) -> None:
    for f in source.iterdir():
        if f.is_file() and f.name not in MODEL_FILES and not f.name.startswith("model"):
            shutil.copy2(f, dest / f.name)


def build_nemo(dest: Path, *, tiny: bool = False, arch: str = "mistral", device: str = "cuda") -> Path:
    """The Nemo-shaped random model in `dest` (bfloat16 on `device`; `tiny`: TINY_NEMO, float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    if (dest / "config.json").exists():
        return dest
    started = time.perf_counter()
    tmp = _fresh(dest)
    try:
        tokenizer, source = corpus_tokenizer(tmp, NEMO["vocab_size"])
        dims = dict(TINY_NEMO if tiny else NEMO)
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if arch == "llama":
            dims.pop("sliding_window")
            config: Any = LlamaConfig(**dims, **special)
        else:
            config = MistralConfig(**dims, **special)
        dtype = torch.float32 if tiny else torch.bfloat16
        torch.manual_seed(0)
        with torch.device("cpu" if tiny else device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp, max_shard_size="5GB")
        del model
        _copy_tokenizer(source, tmp)
        shutil.rmtree(source)
        (tmp / "pov_build.json").write_text(
            json.dumps(
                {
                    "builder": "benchmarks/gpu_models.py",
                    "shape": "mistral-nemo-12b",
                    "arch": arch,
                    "tiny": tiny,
                    "dims": dims,
                    "dtype": str(dtype).removeprefix("torch."),
                    "parameters": params,
                    "seed": 0,
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
        _place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(
        f"built {dest}: {params / 1e9:.2f}B parameters in {time.perf_counter() - started:.0f} s", flush=True
    )
    return dest


def build_embedder(dest: Path, *, hidden: int = 128, layers: int = 2) -> Path:
    """A random-weight sentence-transformer (BERT encoder, mean pooling, `hidden` dims) in `dest`."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    if (dest / "modules.json").exists():
        return dest
    tmp = _fresh(dest)
    try:
        tokenizer, source = corpus_tokenizer(tmp, 8000)
        encoder = tmp / "encoder"
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(0)
        BertModel(config).save_pretrained(encoder)
        _copy_tokenizer(source, encoder)
        word = models.Transformer(str(encoder), max_seq_length=256)
        pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
        out = tmp / "model"
        SentenceTransformer(modules=[word, pooling], device="cpu").save(str(out))
        _place(out, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
