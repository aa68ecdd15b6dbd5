"""On a CUDA GPU: batched generation in bf16 and with Unsloth in 4-bit, and a real CUDA out-of-memory under a
`limits.gpu_memory_gb` cap that crashes exactly the cell meant to. Skipped without CUDA.

Run with `pytest -m gpu tests/test_gpu.py -s` to see the peak-memory figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingTracker, StubRetriever, gen_spec

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Large enough that bitsandbytes has real Linear layers to quantise, small enough to build in seconds.
GPU_DIMS = {"hidden": 1024, "layers": 4, "heads": 16, "intermediate": 2816, "vocab": 2000}
# For the OOM test: wide MLPs (their activations grow with the prompt) and room for a very long prompt.
OOM_DIMS = {
    "hidden": 1024,
    "layers": 2,
    "heads": 16,
    "intermediate": 4096,
    "vocab": 2000,
    "max_position": 65536,
}


def _build(tmp_path_factory: pytest.TempPathFactory, name: str, dims: dict[str, int]) -> Path:
    from runner.generation.tinymodel import TinyDims, build_tiny

    return build_tiny(tmp_path_factory.mktemp(name) / "model", dims=TinyDims(**dims), dtype="bfloat16")


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "gpu-llama", GPU_DIMS)


def _models_yaml(entries: dict[str, str]) -> str:
    return "models:\n" + "".join(f"  {k}: {v}\n" for k, v in entries.items())


def _run(
    tmp: Path,
    model_dir: Path,
    models: dict[str, str],
    *,
    limits: str,
    retriever: Any = None,
    questions: int = 4,
    max_new_tokens: int = 16,
) -> tuple[Any, RecordingTracker]:
    from runner.generation.executors.local import LocalExecutor
    from runner.run.engine import run_experiment
    from runner.spec import expand, load_spec

    path = gen_spec(tmp, model_dir, questions=questions, personas=2, pov_sets=1, limits=limits)
    text = path.read_text()
    head, _, rest = text.partition("models:\n")
    rest = rest.split("\n", 1)[1]  # drop the CPU tiny model of gen_spec
    text = head + _models_yaml(models) + rest
    text = text.replace("max_new_tokens: 4,", f"max_new_tokens: {max_new_tokens},")
    path.write_text(text)
    exp = load_spec(path)
    tracker = RecordingTracker()
    run_experiment(
        exp,
        expand(exp),
        tracker,
        executor=LocalExecutor([0], exp.spec.limits),
        retriever=retriever or StubRetriever(),
        quiet=True,
    )
    return exp, tracker


def _peaks(results: list[Any]) -> str:
    alloc = max(r.metrics.get("gpu_peak_allocated_mb", 0.0) for r in results)
    reserved = max(r.metrics.get("gpu_peak_reserved_mb", 0.0) for r in results)
    return f"peak allocated {alloc:.1f} MiB, peak reserved {reserved:.1f} MiB"


def test_bf16_batched_generation_on_the_gpu(
    tmp_path: Path, gpu_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, tracker = _run(
        tmp_path,
        gpu_model,
        {"bf16": f"{{backend: transformers, name: {gpu_model}, dtype: bfloat16, max_seq_length: 1024}}"},
        limits="{cell_timeout_s: 120}",
    )
    results = list(tracker.results.values())
    assert len(results) == 8 and all(r.status == "finished" for r in results), [r.error for r in results]
    for r in results:
        assert r.metrics["new_tokens"] >= 1
        assert r.metrics["gpu_peak_allocated_mb"] > 0
        assert r.metrics["gpu_peak_reserved_mb"] >= r.metrics["gpu_peak_allocated_mb"]
        assert r.metrics["batch_size"] == 4  # gen_spec's generation.batch_size
    with capsys.disabled():
        print(
            f"\n[gpu] bf16 tiny Llama {GPU_DIMS}: {_peaks(results)}, "
            f"model {results[0].metrics['model_memory_mb']:.1f} MiB"
        )


@pytest.mark.skipif(
    importlib.util.find_spec("unsloth") is None or importlib.util.find_spec("bitsandbytes") is None,
    reason="needs the gpu extra (unsloth, bitsandbytes)",
)
def test_unsloth_4bit_loads_and_generates_in_batches(
    tmp_path: Path, gpu_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both in one run: each group gets its own worker process, so Unsloth is imported first in its own.
    _, tracker = _run(
        tmp_path,
        gpu_model,
        {
            "u4": f"{{backend: unsloth, name: {gpu_model}, load_in_4bit: true, max_seq_length: 1024}}",
            "bf16": f"{{backend: transformers, name: {gpu_model}, dtype: bfloat16, max_seq_length: 1024}}",
        },
        limits="{cell_timeout_s: 300}",
    )
    by_model: dict[str, list[Any]] = {"u4": [], "bf16": []}
    for r in tracker.results.values():
        by_model[r.cell.model].append(r)
    assert all(len(v) == 8 for v in by_model.values())
    assert all(r.status == "finished" for v in by_model.values() for r in v), [
        (r.cause, r.error, r.stderr_tail) for v in by_model.values() for r in v if r.status != "finished"
    ]
    four = by_model["u4"][0].metrics["model_memory_mb"]
    full = by_model["bf16"][0].metrics["model_memory_mb"]
    assert four < 0.5 * full, (four, full)  # the Linear layers really are 4-bit
    assert all(r.metrics["new_tokens"] >= 1 and r.metrics["batch_size"] == 4 for r in by_model["u4"])
    with capsys.disabled():
        print(
            f"\n[gpu] unsloth 4-bit: model {four:.1f} MiB (bf16 {full:.1f} MiB), {_peaks(by_model['u4'])}; "
            f"bf16: {_peaks(by_model['bf16'])}"
        )


def test_a_real_cuda_oom_under_a_memory_cap_crashes_only_the_huge_cell(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _build(tmp_path_factory, "oom-llama", OOM_DIMS)
    # One question's context is ~25,000 words (~40,000 tokens): its MLP activations alone (tokens x 4096 x
    # 2 bytes, several at once) pass 0.5 GiB; the other prompts are a few hundred tokens.
    corpus = " ".join(p[1] for p in StubRetriever(words=200).paragraphs)
    huge = " ".join([corpus] * (25_000 // len(corpus.split()) + 1))
    retriever = StubRetriever(override={"q3": huge})
    _, tracker = _run(
        tmp_path,
        model,
        {"capped": f"{{backend: transformers, name: {model}, dtype: bfloat16, max_seq_length: 65536}}"},
        limits="{cell_timeout_s: 120, gpu_memory_gb: 0.5}",
        retriever=retriever,
        max_new_tokens=8,
    )
    results = list(tracker.results.values())
    assert len(results) == 8
    crashed = [r for r in results if r.status == "crashed"]
    assert [r.cell.question for r in crashed] == ["q3", "q3"], [(r.cell.question, r.cause) for r in crashed]
    assert all(r.cause == "cuda_oom" and "out of memory" in (r.error or "").lower() for r in crashed)
    finished = [r for r in results if r.status == "finished"]
    assert len(finished) == 6
    cap_mb = 0.5 * 1024
    assert all(r.metrics["gpu_peak_reserved_mb"] <= cap_mb for r in finished)
    assert all(r.metrics["attempts"] in (1, 2) for r in finished)
    with capsys.disabled():
        print(
            f"\n[gpu] cap 0.5 GiB: {len(finished)} finished ({_peaks(finished)}), "
            f"{len(crashed)} cuda_oom: {crashed[0].error[:160]}"
        )
