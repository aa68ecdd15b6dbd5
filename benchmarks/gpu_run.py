"""Issue 22 on the lent GPU: the notebook's crash reproduced with a Mistral-Nemo-12B-shaped 4-bit model under a
15 GB cap, and generation throughput against the decode roofline. One command per step; JSON and logs under --out.

Steps (each writes <out>/<step>/ and prints its tables; `all` runs them in order):

  nemo   build the Nemo-12B-shaped random model (benchmarks/gpu_models.py) in bf16 on the GPU into --models
  crash  the seed-replica matrix (experiments/seed_replica.yaml: 2 templates x 2 personas x 2 POV sets x 2 k
         schedules x 10 questions, minus opinion_only x assistant: 120 cells) through the real `pov run`:
         Unsloth 4-bit, max_seq_length 2048, batch 8, limits.gpu_memory_gb 15, MLflow in sqlite; then
         `pov report`; then crash rate by template, causes, peak memory per batch and the memory frontier
         (benchmarks/gpu_crash.py). With --budget-s the run is interrupted (SIGINT, as Ctrl-C) when the budget
         is spent and reported as far as it got; the same command resumes it on a warm machine.
  speed  benchmarks/bench_generation.py with --model: bf16 eager at batch 8 and 32 against the one-by-one
         loop, the same with generation.compile: true, and the decode roofline; with --nemo-batch N also the
         Nemo-shaped model in 4-bit at batch N (the largest the crash run's frontier allows); with --nemo-bf16
         that model in bf16, eager and compiled, at batch 8 and 32 (24.5 GB of weights: the case where the
         roofline is memory bandwidth, not kernel launches as for a 135M model).

Retrieval on the GPU machine: all-MiniLM-L6-v2 (87 MB) cannot travel there with the site (64 MiB per command),
so the crash run embeds with a random-weight sentence-transformer built there (gpu_models.build_embedder;
`--embedder DIR` takes a real one); its prompts keep their real shape (k3 chunks of the corpus). The
throughput passes take corpus passages of the same size (--passages).

On the development machine, once (about 2 minutes; the site is ~45 MiB; the working tree ~2 MiB):

    cd <project root> && ../shared/gpu/make-site unsloth==2026.10.9 bitsandbytes pydantic "mlflow>=3" chromadb cohere gguf

On the GPU machine (device runs with carry [".gpu"]; one line per command, each well under the 10-minute
limit by my estimates, none measured; /opt/x and the built models survive while the machine stays warm;
outputs under $OUT; SMOL is the SmolLM2-135M-Instruct transformers folder, converted there):

    SETUP='mkdir -p /opt/x && { [ -d /opt/x/site ] || tar xJf .gpu/site.txz -C /opt/x; } && export PYTHONPATH=/opt/x/site:$PWD HF_HUB_OFFLINE=1'
    eval "$SETUP" && nvidia-smi | tee $OUT/nvidia-smi.txt && python3 benchmarks/gpu_run.py nemo --out $OUT && python3 benchmarks/gpu_run.py crash --out $OUT --budget-s 420 2>&1 | tee $OUT/crash.log
    eval "$SETUP" && python3 benchmarks/gpu_run.py crash --out $OUT --budget-s 540 2>&1 | tee $OUT/crash.log   # resumes, if the first stopped short
    eval "$SETUP" && python3 benchmarks/gpu_run.py speed --out $OUT --model "$SMOL" 2>&1 | tee $OUT/speed.log            # ~7 min
    eval "$SETUP" && python3 benchmarks/gpu_run.py speed --out $OUT --nemo-bf16 2>&1 | tee $OUT/speed-nemo.log          # ~8 min
    eval "$SETUP" && python3 benchmarks/gpu_run.py speed --out $OUT --nemo-batch 8 2>&1 | tee $OUT/speed-nemo4.log      # ~3 min

(`crash` alone builds what is missing. A crash run that hit its budget says so, and is reported as far as it
got; the same `crash` line on the still-warm machine resumes it, as `pov run` does. Time: a random model never
writes its end token, so every cell generates all of the seed replica's 1024 new tokens: 15 batches of 1024
decode steps, and a batch that crashes is retried one prompt at a time. If that does not fit the budget,
`--max-new-tokens 256` (a new execution: it changes the spec) keeps the prefill, where a batch of long prompts
peaks, and shrinks the KV cache's growth: for 8 prompts of ~1300 tokens, 3.0 GB at 1024 new tokens, 2.0 GB at
256 (40 layers x 8 KV heads x 128 x 2 x 2 bytes = 160 KiB per token).)

Dry run of every step here, on the CPU, with the tiny Nemo-shaped model (2 layers, vocab 131072) and tiny dims:

    python benchmarks/gpu_run.py all --dry-run --out /tmp/gpu-dry
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import gpu_crash  # noqa: E402  (the modules beside this script)
import gpu_models  # noqa: E402

SEED_REPLICA = REPO / "experiments" / "seed_replica.yaml"
MODEL_KEY = "nemo-4bit"
"""The seed replica's model; the crash run points it at the built folder."""


def log(msg: str) -> None:
    print(f"[gpu_run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def versions() -> dict[str, Any]:
    """The machine, for the closing note: GPU, driver, and the packages the run used."""
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (
        "torch",
        "transformers",
        "unsloth",
        "bitsandbytes",
        "sentence-transformers",
        "mlflow",
        "chromadb",
        "pydantic",
        "accelerate",
        "peft",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            out["cuda"] = torch.version.cuda
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        out["driver"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["driver"] = None
    return out


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


# -- a. the model ------------------------------------------------------------------------------------------------
def nemo_dir(args: argparse.Namespace) -> Path:
    return args.models / ("nemo-12b-tiny" if args.dry_run else "nemo-12b")


def step_nemo(args: argparse.Namespace) -> Path:
    dest = nemo_dir(args)
    started = time.perf_counter()
    gpu_models.build_nemo(dest, tiny=args.dry_run, arch=args.arch)
    build = json.loads((dest / "pov_build.json").read_text())
    size = sum(f.stat().st_size for f in dest.glob("*.safetensors"))
    write_json(
        args.out / "nemo" / "build.json",
        {
            **build,
            "dir": str(dest),
            "safetensors_bytes": size,
            "seconds": time.perf_counter() - started,
            **versions(),
        },
    )
    log(f"nemo: {dest} ({size / 1e9:.1f} GB of safetensors)")
    return dest


# -- b. the crash run --------------------------------------------------------------------------------------------
def crash_overrides(args: argparse.Namespace, model: Path, embedder: Path) -> list[str]:
    if args.dry_run:
        spec_model = (
            f"{{backend: transformers, name: {model}, max_seq_length: 2048, device: cpu, dtype: float32}}"
        )
    else:
        spec_model = f"{{backend: unsloth, name: {model}, load_in_4bit: true, max_seq_length: 2048}}"
    emb = f"{{provider: sentence-transformers, model: {embedder}}}"
    name = "seed-replica-dry" if args.dry_run else "seed-replica-h200"
    # The dry run has no memory to run out of: injected cuda_oom faults take the crash path instead.
    faults = "[{cause: cuda_oom, match: {template: summary_opinion}, rate: 0.2}]" if args.dry_run else "[]"
    return [
        f"name={name}",
        f"faults={faults}",
        f"models={{{MODEL_KEY}: {spec_model}}}",
        f"matrix.model=[{MODEL_KEY}]",
        f"embedder={emb}",
        f"reranker={emb}",
        # A collection holds one embedder's vectors: one per embedder folder.
        f"corpus.collection=brics-{hashlib.sha256(str(embedder).encode()).hexdigest()[:12]}",
        f"generation.max_new_tokens={args.max_new_tokens}",
        "generation.batch_size=8",
        "limits.gpu_memory_gb=15",
        f"tracking.experiment={name}",
    ]


def pov(
    args: argparse.Namespace, command: list[str], log_path: Path, budget_s: float | None = None
) -> tuple[int, str]:
    """A `pov` command in its own process (as a user runs it), logged; SIGINT when the budget is spent."""
    state = args.state
    state.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"$ pov {' '.join(command)}")
    with log_path.open("a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", *command],
            cwd=state,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        started, lines, interrupted = time.monotonic(), [], False
        os.set_blocking(proc.stdout.fileno(), False)
        while True:
            chunk = proc.stdout.readline()
            if chunk:
                out.write(chunk)
                lines.append(chunk)
                print(chunk, end="", flush=True)
                continue
            if proc.poll() is not None:
                break
            if budget_s is not None and not interrupted and time.monotonic() - started > budget_s:
                log(
                    f"budget of {budget_s:.0f} s spent: interrupting the run (it resumes with the same command)"
                )
                proc.send_signal(signal.SIGINT)
                interrupted = True
            time.sleep(0.2)
        rest = proc.stdout.read() or ""
        out.write(rest)
        print(rest, end="", flush=True)
    return proc.returncode, "".join(lines) + rest


def step_crash(args: argparse.Namespace) -> dict[str, Any]:
    model = nemo_dir(args) if (nemo_dir(args) / "config.json").exists() else step_nemo(args)
    embedder = args.embedder or gpu_models.build_embedder(args.models / "embedder")
    sets = [x for o in crash_overrides(args, model, embedder) for x in ("--set", o)]
    out = args.out / "crash"
    started = time.perf_counter()
    rc, text = pov(args, ["run", str(SEED_REPLICA), *sets], out / "pov-run.log", args.budget_s)
    run_s = time.perf_counter() - started
    # "results: PATH" when the run ends, "... cells written to PATH ..." when it was interrupted.
    found = re.findall(r"^results: (\S+)$|cells written to (\S+)", text, flags=re.M)
    found = [a or b for a, b in found]
    report_dir = out / "report"
    rc_report, _ = pov(
        args, ["report", str(SEED_REPLICA), *sets, "--out", str(report_dir)], out / "pov-report.log"
    )
    summary: dict[str, Any] = {
        "pov_run_exit": rc,
        "pov_report_exit": rc_report,
        "run_seconds": run_s,
        "overrides": crash_overrides(args, model, embedder),
    }
    if found:
        results = Path(found[-1].strip())
        summary.update(gpu_crash.summarize(results, report_dir / "report.json", 8))
        shutil.copy2(results, out / "results.jsonl")
        gpu_crash.print_summary(summary)
    else:
        log("pov run printed no results path; see crash/pov-run.log")
    db = args.state / "mlflow.db"
    if db.exists():
        shutil.copy2(db, out / "mlflow.db")
    summary["complete"] = rc == 0 and bool(found)
    write_json(out / "summary.json", {**summary, **versions()})
    return summary


# -- c. throughput -----------------------------------------------------------------------------------------------
def bench(args: argparse.Namespace, name: str, extra: list[str]) -> int:
    out = args.out / "speed"
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(HERE / "bench_generation.py"),
        "--passages",
        "--out",
        str(args.models / "bench"),
        "--json",
        str(out / f"{name}.json"),
        *extra,
    ]
    log(f"$ {' '.join(command)}")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p),
    }
    with (out / f"{name}.log").open("w") as log_file:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            print(line, end="", flush=True)
    return proc.wait()


def step_speed(args: argparse.Namespace) -> dict[str, int]:
    """bench_generation passes: SmolLM (bf16, eager and compiled, against the one-by-one loop), the Nemo-shaped
    model in 4-bit (Unsloth; not compilable), and in bf16 eager and compiled (24.5 GB of weights: where the
    roofline is about memory bandwidth rather than kernel launches). The dry run takes tiny models, float32."""
    codes = {}
    seq = ["--cold-batch-size", "--max-seq-length", "2048"]
    tiny = ["--cpu", "--prompts", "8", "--new-tokens", "8", "--batch-size", "4", "8"]
    if args.dry_run:
        codes["smollm"] = bench(args, "smollm", ["--variants", "bf16", "--compile", *seq, *tiny])
    elif args.model is not None:
        smol = [
            "--model",
            str(args.model),
            "--variants",
            "bf16",
            "--compile",
            "--batch-size",
            "8",
            "32",
            *seq,
        ]
        codes["smollm"] = bench(args, "smollm", smol)
    else:
        log("speed: no --model (the SmolLM2-135M-Instruct folder): its passes are skipped")
    if not (args.nemo_batch or args.nemo_bf16 or args.dry_run):
        return _done(args, codes)
    nemo = nemo_dir(args) if (nemo_dir(args) / "config.json").exists() else step_nemo(args)
    few = ["--model", str(nemo), "--skip-baseline", "--prompts", str(args.nemo_prompts), *seq]
    if args.nemo_batch and not args.dry_run:
        four = [*few, "--variants", "4bit", "--batch-size", str(args.nemo_batch)]
        if args.nemo_baseline:
            four.remove("--skip-baseline")
        codes["nemo-4bit"] = bench(args, "nemo-4bit", four)
    if args.nemo_bf16 or args.dry_run:
        sizes = ["--batch-size", "8", "32"]
        codes["nemo-bf16"] = bench(
            args, "nemo-bf16", [*few, "--variants", "bf16", "--compile", *(tiny if args.dry_run else sizes)]
        )
    return _done(args, codes)


def _done(args: argparse.Namespace, codes: dict[str, int]) -> dict[str, int]:
    write_json(args.out / "speed" / "exit_codes.json", {**codes, **versions()})
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["nemo", "crash", "speed", "all"])
    parser.add_argument("--out", type=Path, required=True, help="JSON, logs and the report go here ($OUT)")
    parser.add_argument(
        "--dry-run", "--cpu", action="store_true", help="everything on the CPU with tiny models"
    )
    parser.add_argument(
        "--models", type=Path, help="where models are built (default /opt/x/models; dry run: OUT/models)"
    )
    parser.add_argument(
        "--state",
        type=Path,
        help="MLflow store of the crash run (default /opt/x/pov-gpu; dry run: OUT/state)",
    )
    parser.add_argument(
        "--arch", choices=["mistral", "llama"], default="mistral", help="the Nemo-shaped model's class"
    )
    parser.add_argument(
        "--embedder", type=Path, help="a sentence-transformers folder (default: a random one, built)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, help="crash run (default the seed replica's 1024; dry run 16)"
    )
    parser.add_argument("--budget-s", type=float, help="crash run: interrupt pov run after this many seconds")
    parser.add_argument("--model", type=Path, help="speed: the SmolLM2-135M-Instruct transformers folder")
    parser.add_argument(
        "--nemo-batch", type=int, help="speed: also the Nemo-shaped model in 4-bit at this batch"
    )
    parser.add_argument(
        "--nemo-prompts", type=int, default=32, help="speed: prompts of the Nemo-shaped passes"
    )
    parser.add_argument(
        "--nemo-baseline", action="store_true", help="speed: the one-by-one loop for Nemo too"
    )
    parser.add_argument(
        "--nemo-bf16", action="store_true", help="speed: the Nemo-shaped model in bf16, eager and compiled"
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.models = (args.models or (args.out / "models" if args.dry_run else Path("/opt/x/models"))).resolve()
    args.state = (args.state or (args.out / "state" if args.dry_run else Path("/opt/x/pov-gpu"))).resolve()
    if args.max_new_tokens is None:
        args.max_new_tokens = 16 if args.dry_run else 1024
    args.out.mkdir(parents=True, exist_ok=True)
    log(
        f"{args.step} ({'dry run on the CPU' if args.dry_run else 'GPU'}): out {args.out}, models {args.models}"
    )
    started = time.perf_counter()
    failed = 0
    if args.step in ("nemo", "all"):
        step_nemo(args)
    if args.step in ("crash", "all"):
        summary = step_crash(args)
        failed += not summary.get("cells")
    if args.step in ("speed", "all"):
        failed += sum(code != 0 for code in step_speed(args).values())
    log(
        f"{args.step}: done in {time.perf_counter() - started:.0f} s{'' if not failed else f'; {failed} part(s) failed'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
