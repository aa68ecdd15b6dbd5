"""The decode roofline of a generation benchmark, and the table that compares a pass with it.

A decode step reads every weight once, whatever the batch, so a step takes at least weight bytes / memory
bandwidth, and a batch of b rows makes at most b tokens per such step: the roofline is b x bandwidth /
weight bytes tokens per second. A step also reads the KV cache of every row (prompt plus the tokens so far);
the "incl. KV" figure adds its mean size to the bytes per step, a floor no implementation can beat either.
Tokens/s are measured over the whole `model.generate` call (prefill included), as bench_generation reports
them. Weight bytes are the loaded model's own (`get_memory_footprint`: every parameter and buffer at its
dtype, 4-bit layers as packed), as each runner pass records them (`model_memory_mb`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

H200_GBS = 4800.0
"""H200 HBM3e memory bandwidth, GB/s (NVIDIA's figure: 4.8 TB/s)."""

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Shape:
    """What sizes a decode step's reads: the model's KV cache per position."""

    layers: int
    kv_heads: int
    head_dim: int
    kv_bytes: int
    """Bytes per cached value (the compute dtype: 2 for bf16 and for 4-bit with bf16 compute)."""

    @classmethod
    def of(cls, model_dir: Path, kv_bytes: int) -> Shape:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        heads = int(config["num_attention_heads"])
        head_dim = config.get("head_dim") or int(config["hidden_size"]) // heads
        return cls(
            int(config["num_hidden_layers"]),
            int(config.get("num_key_value_heads") or heads),
            int(head_dim),
            kv_bytes,
        )

    def kv_per_position(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * self.kv_bytes  # keys and values


def roofline(
    weight_bytes: float, rows: int, bandwidth_gbs: float, kv_bytes_per_step: float = 0.0
) -> dict[str, float]:
    """Floor of a decode step (ms) and the tokens/s it allows at `rows` rows."""
    step_s = (weight_bytes + kv_bytes_per_step) / (bandwidth_gbs * 1e9)
    return {"step_ms": 1000 * step_s, "tok_s": rows / step_s if step_s > 0 else 0.0}


def compare(row: dict[str, Any], shape: Shape | None, bandwidth_gbs: float) -> dict[str, float]:
    """The roofline figures of one benchmark row (rows per step: its batch size; 1 for the one-by-one loop)."""
    weight_bytes = row.get("weight_bytes", 0.0)
    rows = int(row.get("batch_size", 1))
    measured = row["tokens"] / row["generate_s"] if row.get("generate_s") else 0.0
    bare = roofline(weight_bytes, rows, bandwidth_gbs)
    out = {
        "weight_gb": weight_bytes / 1e9,
        "floor_ms": bare["step_ms"],
        "roofline_tok_s": bare["tok_s"],
        "measured_tok_s": measured,
        "ratio": measured / bare["tok_s"] if bare["tok_s"] else 0.0,
    }
    if shape is not None:
        context = row.get("prompt_tokens_mean", 0.0) + row.get("new_tokens", 0) / 2
        kv = rows * context * shape.kv_per_position()
        with_kv = roofline(weight_bytes, rows, bandwidth_gbs, kv)
        out.update(kv_gb=kv / 1e9, ratio_incl_kv=measured / with_kv["tok_s"] if with_kv["tok_s"] else 0.0)
    return out


def print_table(rows: list[dict[str, Any]], shape: Shape | None, bandwidth_gbs: float, title: str) -> None:
    line = "=" * 118
    print(
        f"\n{line}\n{title}: decode roofline at {bandwidth_gbs:.0f} GB/s (weight bytes / bandwidth per step)\n{line}"
    )
    print(
        f"{'variant':<16}{'mode':<22}{'rows':>5}{'weights GB':>11}{'floor ms':>10}{'roofline tok/s':>16}"
        f"{'tok/s':>10}{'ratio':>8}{'KV GB/step':>12}{'ratio incl. KV':>16}"
    )
    for r in rows:
        f = compare(r, shape, bandwidth_gbs)
        print(
            f"{r['variant']:<16}{r['mode']:<22}{int(r.get('batch_size', 1)):>5}{f['weight_gb']:>11.3f}"
            f"{f['floor_ms']:>10.3f}{f['roofline_tok_s']:>16.0f}{f['measured_tok_s']:>10.0f}"
            f"{100 * f['ratio']:>7.1f}%{f.get('kv_gb', 0.0):>12.3f}{100 * f.get('ratio_incl_kv', 0.0):>15.1f}%"
        )
    print(line)
