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
DIMS = {"hidden": 2048, "layers": 16, "heads": 32, "intermediate": 8192, "vocab": 32000, "max_position": 4096}


def build_model(out_root: Path) -> Path:
    from runner.generation.tinymodel import TinyDims, build_tiny

    dest = out_root / "llama-1b-bf16"
    if not (dest / "config.json").exists():
        started = time.perf_counter()
        build_tiny(dest, seed=0, dims=TinyDims(**DIMS), dtype="bfloat16")
        print(f"built {dest} in {time.perf_counter() - started:.0f} s", flush=True)
    return dest


class PassageRetriever:
    """A runner.retrieval.Retriever for when Chroma or the embedder cannot run here: the same shapes (k3
    passages of up to 180 words), chosen by a hash of the key."""

    def __init__(self, words: int = 180) -> None:
        import hashlib

        self._hash = hashlib.sha256
        self.passages = []
        for f in sorted((REPO / "data" / "brics").glob("[0-9]*.md")):
            text = f.read_text().split()
            self.passages += [" ".join(text[i : i + words]) for i in range(0, len(text), words)]

    def retrieve(self, keys: Any) -> dict[Any, Any]:
        from runner.retrieval import RetrievalResult, Stage

        out = {}
        for q, p, k in keys:
            start = int(self._hash(f"{q}|{p}".encode()).hexdigest()[:8], 16)
            picked = [self.passages[(start + j) % len(self.passages)] for j in range(k[2])]
            ids = [f"p{j}" for j in range(len(picked))]
            scores = [1.0 - j / 10 for j in range(len(picked))]
            stages = [Stage(name, ids, picked, scores) for name in ("vector", "query", "pov")]
            out[(q, p, tuple(k))] = RetrievalResult(q, p, tuple(k), stages)
        return out

    def check_embedder(self) -> None:
        return None


def overrides(model_dir: Path, args: argparse.Namespace, batch_size: int, four_bit: str | None) -> list[str]:
    backend = four_bit or "transformers"
    model = (
        f"{{backend: {backend}, name: {model_dir}, max_seq_length: 4096, dtype: bfloat16"
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
        "limits.cell_timeout_s=600",
        "faults=[]",
    ]


def experiment(model_dir: Path, args: argparse.Namespace, batch_size: int, four_bit: str | None) -> Any:
    from runner.spec import load_spec

    return load_spec(REPO / "experiments" / "tiny.yaml", overrides(model_dir, args, batch_size, four_bit))


def pick_retriever(exp: Any) -> tuple[Any, str]:
    try:
        from runner.retrieval import open_retriever

        retriever = open_retriever(exp)
        return retriever, "runner.retrieval (Chroma + MiniLM)"
    except Exception as e:  # no chromadb / no embedder weights on this host
        return PassageRetriever(), f"corpus passages (real retrieval unavailable: {type(e).__name__})"


def runner_pass(
    model_dir: Path, args: argparse.Namespace, batch_size: int, four_bit: str | None, warm: bool
) -> dict[str, Any]:
    from runner.generation import make_executor
    from runner.generation.executors.local import LocalExecutor
    from runner.generation.executors.serve_client import ServeExecutor
    from runner.run import NullTracker, read_results, run_experiment
    from runner.spec import expand

    exp = experiment(model_dir, args, batch_size, four_bit)
    cells = expand(exp)[: args.prompts]
    retriever, source = pick_retriever(exp)
    if warm:
        executor = make_executor(exp.spec, state_dir=exp.state_dir)
        assert isinstance(executor, ServeExecutor), "pov serve is not running"
    else:
        executor = LocalExecutor([0], exp.spec.limits)
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
    return {
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
        "prompts": [r["prompt"] for r in sorted(rows, key=lambda r: r["cell"]["id"])],
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


def _one_by_one(
    model_dir: str, prompts: list[str], new_tokens: int, four_bit: str | None, queue: Any
) -> None:
    """The notebook's loop, in a fresh process: load once, then tokenize, generate and decode each prompt."""
    import torch

    if four_bit == "unsloth":
        import unsloth  # noqa: F401  (before transformers)
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=model_dir, max_seq_length=4096, dtype=None, load_in_4bit=True
        )
        FastLanguageModel.for_inference(model)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
        if four_bit:
            kwargs.update(
                quantization_config=BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
                ),
                device_map={"": "cuda:0"},
            )
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        if not four_bit:
            model = model.to("cuda:0")
        tok = AutoTokenizer.from_pretrained(model_dir)
    tokens = 0
    torch.cuda.synchronize()
    started = time.perf_counter()
    for prompt in prompts:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        inputs = tok(text, return_tensors="pt", add_special_tokens=False).to("cuda:0")
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
        tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    torch.cuda.synchronize()
    queue.put(
        {
            "generate_s": time.perf_counter() - started,
            "tokens": tokens,
            "peak_alloc_mb": torch.cuda.max_memory_allocated() / 2**20,
        }
    )


def one_by_one_pass(
    model_dir: Path, prompts: list[str], new_tokens: int, four_bit: str | None
) -> dict[str, Any]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one_by_one, args=(str(model_dir), prompts, new_tokens, four_bit, queue))
    proc.start()
    result = queue.get(timeout=3600)
    proc.join()
    return dict(result)


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
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_generation: skipped (no CUDA GPU)")
        return 0
    gpu = torch.cuda.get_device_name(0)
    model_dir = build_model(args.out)
    variants: list[tuple[str, str | None]] = [("bf16", None)] if "bf16" in args.variants else []
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
                    r = runner_pass(model_dir, args, bs, backend_4bit, warm=True)
                    prompts = r.pop("prompts")
                    rows.append({"variant": label, "mode": f"warm bs={bs}", **r})
                    print(
                        f"  {label} warm bs={bs}: {r['wall_s']:.1f} s wall, {r['generate_s']:.1f} s in generate "
                        f"({r['finished']} ok, {r['crashed']} crashed; prompts from {r['source']})",
                        flush=True,
                    )
            finally:
                stop_server(server)
        if not args.skip_baseline and prompts:
            b = one_by_one_pass(model_dir, prompts, args.new_tokens, four_bit)
            rows.append({"variant": label, "mode": "one-by-one", "wall_s": b["generate_s"], **b})
            print(f"  {label} one-by-one: {b['generate_s']:.1f} s", flush=True)
    report(rows, gpu, args)
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "dims": DIMS, "rows": rows}, indent=2) + "\n")
    return 0


def report(rows: list[dict[str, Any]], gpu: str, args: argparse.Namespace) -> None:
    line = "=" * 124
    print(
        f"\n{line}\nbench_generation  GPU: {gpu}  model: Llama {DIMS}  "
        f"{args.prompts} prompts x {args.new_tokens} new tokens (min = max)\n{line}"
    )
    print(
        f"{'variant':<14}{'mode':<16}{'wall s':>9}{'generate s':>12}{'overhead s':>12}{'% of gen':>10}"
        f"{'load s':>8}{'tok/s wall':>12}{'tok/s gen':>11}{'prompt tok':>12}{'peak MiB':>10}"
    )
    for r in rows:
        runner = r["mode"] != "one-by-one"
        share = f"{100 * r['overhead_s'] / r['generate_s']:.1f}" if runner else "-"
        print(
            f"{r['variant']:<14}{r['mode']:<16}{r['wall_s']:>9.1f}{r['generate_s']:>12.2f}"
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
        )
    print(line)


if __name__ == "__main__":
    sys.exit(main())
