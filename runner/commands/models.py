"""Build local models. `pov models tiny DIR` builds a tiny random-weight Llama with a BPE tokenizer trained on
a corpus: a model that runs anywhere offline (its answers are gibberish; the pipeline around it is real).
The same seed, dims and corpus always give byte-identical files."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="KIND")
    sub.required = True
    tiny = sub.add_parser(
        "tiny",
        help="a tiny random Llama (about 0.4M parameters by default)",
        description="Build a tiny random-weight LlamaForCausalLM with a BPE tokenizer and an "
        "[INST]-style chat template into DIR (built elsewhere, then moved in).",
    )
    tiny.add_argument("dir", metavar="DIR", help="folder to create (must not exist or be empty)")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    tiny.add_argument(
        "--corpus",
        metavar="PATH",
        help="folder of .md/.txt files (or one file) to train the tokenizer on (default: data/brics)",
    )
    dims = tiny.add_argument_group("dimensions (defaults keep CPU generation fast)")
    dims.add_argument("--hidden", type=int, default=64)
    dims.add_argument("--layers", type=int, default=2)
    dims.add_argument("--heads", type=int, default=4)
    dims.add_argument("--kv-heads", type=int, default=None)
    dims.add_argument("--intermediate", type=int, default=None, help="MLP width (default 2 x hidden)")
    dims.add_argument("--vocab", type=int, default=2000)
    dims.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")


def main(args: argparse.Namespace) -> int:
    from runner.errors import UserError

    if args.hidden < 1 or args.layers < 1 or args.heads < 1 or args.hidden % args.heads:
        raise UserError(f"--hidden {args.hidden} must be a positive multiple of --heads {args.heads}")
    if args.kv_heads is not None and (args.kv_heads < 1 or args.heads % args.kv_heads):
        raise UserError(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    if args.vocab < 300:
        raise UserError(f"--vocab {args.vocab}: at least 300 (256 byte tokens, specials and some merges)")
    from runner.generation import TinyDims, build_tiny, folder_hash

    dims = TinyDims(
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        vocab=args.vocab,
    )
    out = build_tiny(Path(args.dir), seed=args.seed, corpus=args.corpus, dims=dims, dtype=args.dtype)
    print(f"built {out} (revision {folder_hash(out)})")
    print(f"use it in a spec as  models: {{tiny: {{backend: transformers, name: {out}}}}}")
    return 0
