"""Generation throughput on a GPU: the runner's batched generation against a one-prompt-at-a-time loop like
the notebook's, for a ~1B-parameter Llama-shaped random model in bf16 and in 4-bit, and the runner's own
overhead (wall time of run_experiment minus the time inside generate). Skips (exit 0) without CUDA.

Two kinds of runner pass: `cold` starts its own worker (spawn, imports, CUDA context, model load: begun
before retrieval, so they overlap the run's preparation), as a first `pov run` does; `warm` hands generation
to a `pov serve` that has the model loaded, as every later run of a session does (and as the notebook's
kernel keeps its model). The one-by-one loop is timed from a loaded model too.

    python benchmarks/bench_generation.py                  # 64 prompts, 128 new tokens, batch sizes 8 and 32
    python benchmarks/bench_generation.py --batch-size 8 16 32 64 --variants bf16 --cold-batch-size
    python benchmarks/bench_generation.py --skip-baseline --repeat 3 --json out.json   # overhead only
    python benchmarks/bench_generation.py --model DIR --variants bf16 --compile   # a real model; + compiled
    python benchmarks/bench_generation.py --cpu --prompts 8 --new-tokens 8        # dry run: tiny model, CPU

`--model DIR` runs a transformers folder instead of the built 1B model. `--compile` adds, for bf16, warm
passes with `generation.compile: true` (static KV cache + torch.compile with CUDA graphs): one first pass
per batch size that pays the compilation, then the timed ones, whose answers are compared with the eager
passes' answers. The table ends with the decode roofline (benchmarks/roofline.py: weight bytes / memory
bandwidth per step, `--bandwidth-gbs`, default the H200's 4,800 GB/s) and the share of it each pass reached.

Each runner pass says where its overhead went, from the workers' own clocks: before the first batch (the
run's preparation, and in a cold pass the worker's imports and load), in the backend outside
`model.generate` (template, tokenizer, padding, decoding), between batches, and after the last batch.

The prompts are the quickstart's (its templates and personas, every question and POV set), with context
from the real retriever when it can run here, else from corpus passages of the same size (5 x 180 words).
The model is built once by runner.generation.tinymodel (hidden 2048, 16 layers, 32 heads, MLP 8192, vocab 32000) into
.pov/bench/. Every answer is exactly --new-tokens long (min_new_tokens = max_new_tokens), so both sides do
the same work. 4-bit uses Unsloth when it is installed, else transformers with bitsandbytes.

Heavy imports stay inside functions: worker processes are spawned and re-import this module.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402  (the modules beside this script)
from notebook_loop import one_by_one_pass  # noqa: E402
from passages import PassageRetriever  # noqa: E402

DIMS = {"hidden": 2048, "layers": 16, "heads": 32, "intermediate": 8192, "vocab": 32000, "max_position": 4096}


def build_model(out_root: Path, cpu: bool = False) -> Path:
    from runner.generation.tinymodel import TinyDims, build_tiny

    dest = out_root / ("tiny-cpu" if cpu else "llama-1b-bf16")
    if not (dest / "config.json").exists():
        started = time.perf_counter()
        if cpu:
            build_tiny(dest, seed=0)
        else:
            build_tiny(dest, seed=0, dims=TinyDims(**DIMS), dtype="bfloat16")
        print(f"built {dest} in {time.perf_counter() - started:.0f} s", flush=True)
    return dest


def device_of(args: argparse.Namespace) -> str:
    return "cpu" if args.cpu else "cuda:0"


def overrides(
    model_dir: Path, args: argparse.Namespace, batch_size: int, four_bit: str | None, compile: bool = False
) -> list[str]:
    backend = four_bit or "transformers"
    where = "dtype: float32, device: cpu" if args.cpu else "dtype: bfloat16"
    model = (
        f"{{backend: {backend}, name: {model_dir}, max_seq_length: {args.max_seq_length}, {where}"
        f"{', load_in_4bit: true' if four_bit else ''}}}"
    )
    return [
        f"models={{bench: {model}}}",
        "matrix.model=[bench]",
        "matrix.question=all",
        "matrix.pov_set=all",
        f"generation.max_new_tokens={args.new_tokens}",
        f"generation.min_new_tokens={args.new_tokens}",
        f"generation.batch_size={batch_size}",
        f"generation.compile={str(compile).lower()}",
        "limits.cell_timeout_s=600",
        "faults=[]",
    ]


def experiment(
    model_dir: Path, args: argparse.Namespace, batch_size: int, four_bit: str | None, compile: bool = False
) -> Any:
    from runner.spec import load_spec

    return load_spec(
        REPO / "experiments" / "tiny.yaml", overrides(model_dir, args, batch_size, four_bit, compile)
    )


def pick_retriever(exp: Any, passages: bool = False) -> tuple[Any, str]:
    if passages:
        return PassageRetriever(), "corpus passages (--passages)"
    try:
        from runner.retrieval import open_retriever

        retriever = open_retriever(exp)
        return retriever, "runner.retrieval (Chroma + MiniLM)"
    except Exception as e:  # no chromadb / no embedder weights on this host
        return PassageRetriever(), f"corpus passages (real retrieval unavailable: {type(e).__name__})"


def runner_pass(
    model_dir: Path,
    args: argparse.Namespace,
    batch_size: int,
    four_bit: str | None,
    warm: bool,
    compile: bool = False,
) -> dict[str, Any]:
    from runner.generation import make_executor
    from runner.generation.executors.local import LocalExecutor
    from runner.generation.executors.serve_client import ServeExecutor
    from runner.run import NullTracker, read_results, run_experiment
    from runner.spec import expand

    exp = experiment(model_dir, args, batch_size, four_bit, compile)
    cells = expand(exp)[: args.prompts]
    retriever, source = pick_retriever(exp, args.passages)
    if warm:
        executor = make_executor(exp.spec, state_dir=exp.state_dir)
        assert isinstance(executor, ServeExecutor), "pov serve is not running"
    else:
        executor = LocalExecutor(None if args.cpu else [0], exp.spec.limits)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    began = time.time()
    summary = run_experiment(exp, cells, NullTracker(), executor=executor, retriever=retriever, quiet=True)
    ended = time.time()
    if profiler is not None:
        import pstats

        profiler.disable()
        print(f"--- profile of this process, {'warm' if warm else 'cold'} bs={batch_size} ---")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    rows = list(read_results(summary.results_path).values())
    done = [r for r in rows if r["status"] == "finished"]
    tokens = sum(r["metrics"]["new_tokens"] for r in done)
    load = max((r["metrics"].get("model_load_s", 0.0) for r in done), default=0.0) if not warm else 0.0
    waited = max((r["metrics"].get("worker_start_s", 0.0) for r in done), default=0.0)
    booted = max((r["metrics"].get("worker_boot_s", 0.0) for r in done), default=0.0)
    ordered = sorted(rows, key=lambda r: r["cell"]["id"])
    return {
        "batch_size": batch_size,
        "new_tokens": args.new_tokens,
        "weight_bytes": max((r["metrics"].get("model_memory_mb", 0.0) for r in done), default=0.0) * 2**20,
        # Keyed by prompt: generation.compile is part of the cell ids, so ids do not pair the passes up.
        "outputs": {r["prompt"]: r.get("output") for r in ordered},
        "wall_s": summary.wall_time_s,
        "generate_s": summary.generate_time_s,
        "load_s": load,
        "overhead_s": summary.wall_time_s - summary.generate_time_s,
        "tokens": tokens,
        "finished": len(done),
        "crashed": summary.crashed,
        "prompt_tokens_mean": sum(r["metrics"]["prompt_tokens"] for r in done) / max(len(done), 1),
        "peak_alloc_mb": max((r["metrics"]["gpu_peak_allocated_mb"] for r in done), default=0.0),
        "overhead": overhead_breakdown(done, began, ended),
        "phases": {
            **{k: round(v, 2) for k, v in summary.phases.items()},
            "worker boot (spawn, imports, load)": round(booted, 1),
            "waited for the worker": round(waited, 1),
        },
        "prompts": [r["prompt"] for r in ordered],
        "source": source,
    }


def overhead_breakdown(done: list[dict[str, Any]], began: float, ended: float) -> dict[str, float]:
    """Where the seconds outside `model.generate` went, from the batches' own clocks (workers stamp each
    batch's start and end around the backend's generate call; latency_s is model.generate alone)."""
    batches = sorted({(r["started_at"], r["ended_at"], r["metrics"]["latency_s"]) for r in done})
    if not batches:
        return {}
    return {
        "before first batch": round(batches[0][0] - began, 3),
        "in backend, outside model.generate": round(sum(e - s - lat for s, e, lat in batches), 3),
        "between batches": round(sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(batches)), 3),
        "after last batch": round(ended - max(e for _, e, _ in batches), 3),
    }


def start_server(model_dir: Path, args: argparse.Namespace, four_bit: str | None) -> Any:
    """`pov serve` with the benchmark's model loaded; returns once the model is in GPU memory."""
    import subprocess

    from runner.generation import server_info as serve

    exp = experiment(model_dir, args, 1, four_bit)
    command = [sys.executable, "-m", "runner.cli", "serve", str(exp.path), "--idle-timeout", "60"]
    for override in overrides(model_dir, args, 1, four_bit):
        command += ["--set", override]
    log = (args.out / "serve.log").open("a")
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = "-"
    while line and "pov serve: ready" not in line:  # printed once the model is loaded
        line = proc.stdout.readline()
    if not line or serve.find_server(exp.state_dir) is None:
        proc.kill()
        raise RuntimeError(f"pov serve did not start: {line!r}; see {args.out / 'serve.log'}")
    print(
        f"  pov serve ready in {time.perf_counter() - started:.1f} s (spawn, imports, model load)", flush=True
    )
    return proc, exp.state_dir


def stop_server(handle: Any) -> None:
    from runner.generation import server_info as serve

    proc, state_dir = handle
    serve.request(state_dir, ("shutdown",))
    proc.wait(120)


def warm_pass(
    rows: list[dict[str, Any]],
    model_dir: Path,
    args: argparse.Namespace,
    label: str,
    bs: int,
    backend_4bit: str | None,
    mode: str,
    compile: bool = False,
) -> list[str]:
    """One runner pass through `pov serve`, added to `rows`; returns its prompts."""
    r = runner_pass(model_dir, args, bs, backend_4bit, warm=True, compile=compile)
    prompts: list[str] = r.pop("prompts")
    if compile:
        eager = [e for e in rows if e["variant"] == label and e["mode"] == f"warm bs={bs}"]
        if eager:
            same = sum(r["outputs"][k] == v for k, v in eager[0]["outputs"].items() if k in r["outputs"])
            r["same_answers_as_eager"] = f"{same}/{len(eager[0]['outputs'])}"
    rows.append({"variant": label, "mode": mode, **r})
    print(
        f"  {label} {mode}: {r['wall_s']:.1f} s wall, {r['generate_s']:.1f} s in generate "
        f"({r['finished']} ok, {r['crashed']} crashed; prompts from {r['source']}"
        f"{'; same answers as eager: ' + r['same_answers_as_eager'] if 'same_answers_as_eager' in r else ''})",
        flush=True,
    )
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, nargs="*", default=[8, 32], help="warm passes (pov serve)")
    parser.add_argument(
        "--cold-batch-size", type=int, nargs="*", default=[32], help="cold passes (the run starts its worker)"
    )
    parser.add_argument("--variants", nargs="+", choices=["bf16", "4bit"], default=["bf16", "4bit"])
    parser.add_argument("--skip-baseline", action="store_true", help="runner passes only")
    parser.add_argument("--out", type=Path, default=REPO / ".pov" / "bench", help="where the model is built")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each runner pass")
    parser.add_argument("--repeat", type=int, default=1, help="warm passes per batch size")
    parser.add_argument(
        "--model", type=Path, help="a transformers model folder instead of the built 1B model"
    )
    parser.add_argument("--compile", action="store_true", help="also warm passes with generation.compile")
    parser.add_argument(
        "--cpu", action="store_true", help="run on the CPU (a dry run: the tiny model, float32)"
    )
    parser.add_argument("--max-seq-length", type=int, default=4096, help="the model's max_seq_length")
    parser.add_argument("--passages", action="store_true", help="corpus passages instead of the retriever")
    parser.add_argument("--bandwidth-gbs", type=float, default=roofline.H200_GBS, help="for the roofline")
    args = parser.parse_args(argv)
    import torch

    if args.cpu:
        gpu = "cpu (dry run)"
        if "4bit" in args.variants:
            print("4-bit: skipped (needs a GPU)")
            args.variants = [v for v in args.variants if v != "4bit"]
    elif not torch.cuda.is_available():
        print("bench_generation: skipped (no CUDA GPU)")
        return 0
    else:
        gpu = torch.cuda.get_device_name(0)
    args.out.mkdir(parents=True, exist_ok=True)  # pov serve's log goes there before any model is built
    model_dir = args.model.resolve() if args.model else build_model(args.out, args.cpu)
    variants: list[tuple[str, str | None]] = (
        [("fp32-cpu" if args.cpu else "bf16", None)] if "bf16" in args.variants else []
    )
    if "4bit" in args.variants:
        if importlib.util.find_spec("unsloth") is not None:
            variants.append(("4bit-unsloth", "unsloth"))
        elif importlib.util.find_spec("bitsandbytes") is not None:
            variants.append(("4bit-bnb", "bnb"))
        else:
            print("4-bit: skipped (neither unsloth nor bitsandbytes is installed)")
    rows: list[dict[str, Any]] = []
    for label, four_bit in variants:
        backend_4bit = "unsloth" if four_bit == "unsloth" else ("transformers" if four_bit else None)
        prompts: list[str] = []
        for bs in args.cold_batch_size:
            r = runner_pass(model_dir, args, bs, backend_4bit, warm=False)
            prompts = r.pop("prompts")
            rows.append({"variant": label, "mode": f"cold bs={bs}", **r})
            print(
                f"  {label} cold bs={bs}: {r['wall_s']:.1f} s wall, {r['generate_s']:.1f} s in generate",
                flush=True,
            )
        if args.batch_size:
            server = start_server(model_dir, args, backend_4bit)
            try:
                for bs in [b for b in args.batch_size for _ in range(args.repeat)]:
                    prompts = warm_pass(rows, model_dir, args, label, bs, backend_4bit, f"warm bs={bs}")
                if args.compile and four_bit is None:
                    for bs in args.batch_size:
                        # The first pass of a batch size compiles its graphs; the next ones are timed.
                        warm_pass(rows, model_dir, args, label, bs, None, f"compile bs={bs} (1st)", True)
                        for _ in range(args.repeat):
                            warm_pass(rows, model_dir, args, label, bs, None, f"compiled bs={bs}", True)
            finally:
                stop_server(server)
        if not args.skip_baseline and prompts:
            b = one_by_one_pass(model_dir, prompts, args.new_tokens, four_bit, device_of(args))
            rows.append({"variant": label, "mode": "one-by-one", "wall_s": b["generate_s"], **b})
            print(f"  {label} one-by-one: {b['generate_s']:.1f} s", flush=True)
    report(rows, gpu, args, model_dir)
    if args.json:
        figures = [{k: v for k, v in r.items() if k != "outputs"} for r in rows]
        for r in figures:
            r["roofline"] = roofline.compare(r, shape_of(model_dir, args), args.bandwidth_gbs)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"gpu": gpu, "model": str(model_dir), "dims": model_dims(model_dir), "rows": figures},
                indent=2,
            )
            + "\n"
        )
    return 0


def model_dims(model_dir: Path) -> dict[str, Any]:
    config = json.loads((model_dir / "config.json").read_text())
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
    )
    return {k: config[k] for k in keys if k in config}


def shape_of(model_dir: Path, args: argparse.Namespace) -> roofline.Shape:
    return roofline.Shape.of(model_dir, 4 if args.cpu else 2)


def report(rows: list[dict[str, Any]], gpu: str, args: argparse.Namespace, model_dir: Path) -> None:
    line = "=" * 124
    print(
        f"\n{line}\nbench_generation  GPU: {gpu}  model: {model_dir.name} {model_dims(model_dir)}  "
        f"{args.prompts} prompts x {args.new_tokens} new tokens (min = max)\n{line}"
    )
    print(
        f"{'variant':<14}{'mode':<22}{'wall s':>9}{'generate s':>12}{'overhead s':>12}{'% of gen':>10}"
        f"{'load s':>8}{'tok/s wall':>12}{'tok/s gen':>11}{'prompt tok':>12}{'peak MiB':>10}"
    )
    for r in rows:
        runner = r["mode"] != "one-by-one"
        share = f"{100 * r['overhead_s'] / r['generate_s']:.1f}" if runner else "-"
        print(
            f"{r['variant']:<14}{r['mode']:<22}{r['wall_s']:>9.1f}{r['generate_s']:>12.2f}"
            f"{r.get('overhead_s', 0.0):>12.2f}{share:>10}{r.get('load_s', 0.0):>8.1f}"
            f"{r['tokens'] / r['wall_s']:>12.0f}{r['tokens'] / r['generate_s']:>11.0f}"
            f"{r.get('prompt_tokens_mean', 0.0):>12.0f}{r['peak_alloc_mb']:>10.0f}"
        )
    print(line)
    for r in rows:
        if r["mode"] == "one-by-one":
            continue
        base = [b for b in rows if b["variant"] == r["variant"] and b["mode"] == "one-by-one"]
        speed = ""
        if base:
            ratio = (r["tokens"] / r["generate_s"]) / (base[0]["tokens"] / base[0]["generate_s"])
            speed = f"{ratio:.1f}x the one-by-one loop's tokens/s inside generate; "
        print(
            f"{r['variant']} {r['mode']}: {speed}runner overhead {r['overhead_s']:.2f} s "
            f"= {100 * r['overhead_s'] / r['generate_s']:.1f}% of generate time; where: {r.get('overhead', {})}; "
            f"phases: {r.get('phases', {})}"
            + (
                f"; same answers as eager: {r['same_answers_as_eager']}"
                if "same_answers_as_eager" in r
                else ""
            )
        )
    print(line)
    roofline.print_table(rows, shape_of(model_dir, args), args.bandwidth_gbs, f"bench_generation on {gpu}")


if __name__ == "__main__":
    sys.exit(main())
