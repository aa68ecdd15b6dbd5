"""pov_scores: the notebook's loop against the numpy and torch paths, and against a bare matrix product.

    pytest benchmarks/bench_scoring.py -o python_files='bench_*.py' --benchmark-columns=min,median,mean,max,rounds -s
    python benchmarks/bench_scoring.py notebook --runs 10              # interleaved ratios, 10 separate runs
    python benchmarks/bench_scoring.py notebook --hogs 1               # ... with a CPU hog on the other core
    python benchmarks/bench_scoring.py large --rounds 15 --baseline HEAD~1   # ... and the code at a git ref

Two shapes, both float32 with d = 1024 (Cohere embed v3) and p = 16 POV statements:
- notebook: 100 questions x 10 documents (the notebook's k2), batched into one call. Target: >= 100x the
  loop, on a quiet machine and with the other core busy.
- large: 20,000 x 64 documents: `doc_emb` is 20000 x 64 x 1024 x 4 B = 5.24 GB. It is used when the machine
  has room for it (available memory >= 8 GB, checked at collection); otherwise the benchmark falls back to
  2,000 x 64 (0.52 GB) and says so in the group name and in `extra_info`. Target: within 1.3x of the bare
  product `(N*64, 1024) @ (1024, 16)`. The loop is not timed at the large shape: at ~4 us per pair, 20
  million pairs would take minutes per round.

What the code does (runner.retrieval.products): numpy inputs stay in numpy. Under 32 MB (the notebook shape
is 4 MB) the product runs on one BLAS thread per core that other processes left idle over the last tenth of a
second (one when they are busy), so it never waits for a busy core; from 32 MB on, the rows are cut into
blocks of 1,024 that one thread per core takes in turn, each block on one BLAS thread. The norms (`numpy`,
which checks nothing and divides by them) are taken before each block's product, whose pass then finds the
rows in cache, so they cost no second pass over memory. `numpy-unit` (assume_normalized=True, what retrieval uses) skips the
norms. torch tensors go to torch (`torch`, `torch-unit`: CPU tensors sharing the numpy memory).

Entries: `loop` (the notebook's calculate_similarity/loop_pov_score, in tests/test_scoring.py), `numpy`,
`numpy-unit`, `torch`, `torch-unit`, and `bare-numpy` / `bare-torch` (the product alone, numpy's with the
BLAS's default threading); with CUDA also `cuda`, `cuda-unit` and `bare-cuda` (tensors moved to the GPU once,
outside the timing; each call synchronised); with --baseline REF, `numpy@REF` and `numpy-unit@REF` (that
commit's runner/retrieval/scoring.py, loaded beside this one). The `interleaved` tests and the command line
run every entry once per round, round after round, and print each entry's ratio to its reference per round.

The other stage-3 methods, beside the notebook's `l2` (pov_scores): `blend-<entry>` (blend_scores: stage 2's
scores and the POV score, z-scored per question and mixed) and `contrast-<entry>` (contrast_scores against two
reference sets of P statements each, as `reference: others` does with a spec of three POV sets), for
<entry> in numpy, numpy-unit, torch, torch-unit (and cuda, cuda-unit). Target: within 1.5x of the `l2` entry
of the same kind at the large shape; the interleaved tables print each one's ratio to that entry.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_scoring import reference_pov

from runner.retrieval.scoring import blend_scores, contrast_scores, pov_scores

D, P = 1024, 16
NOTEBOOK = (100, 10)
LARGE_FULL = (20_000, 64)
LARGE_FALLBACK = (2_000, 64)


def _available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 0


LARGE = LARGE_FULL if _available_bytes() >= 8 << 30 else LARGE_FALLBACK


def _unit_batch(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Unit rows of shape (*shape, D), made in slabs so that no float64 or temporary copy of it exists."""
    rng = np.random.default_rng(seed)
    out = np.empty((*shape, D), dtype=np.float32)
    flat = out.reshape(-1, D)
    step = 65_536
    for start in range(0, flat.shape[0], step):
        block = flat[start : start + step]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


@pytest.fixture(scope="module")
def povs() -> np.ndarray:
    return _unit_batch((1, P), 1)[0]


@pytest.fixture(scope="module")
def notebook_docs() -> np.ndarray:
    return _unit_batch(NOTEBOOK, 2)


@pytest.fixture(scope="module")
def large_docs() -> np.ndarray:
    return _unit_batch(LARGE, 3)


def _label(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}x{D} @ {P}"


def _run(benchmark: Any, group: str, fn: Any, rounds: int, shape: tuple[int, int]) -> Any:
    benchmark.group = group
    benchmark.extra_info["shape"] = _label(shape)
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


CUDA = torch.cuda.is_available()
ENTRIES = ["loop", "numpy", "numpy-unit", "torch", "torch-unit", "bare-numpy", "bare-torch"]
if CUDA:
    ENTRIES += ["cuda", "cuda-unit", "bare-cuda"]
L2_KINDS = [e for e in ENTRIES if e != "loop" and not e.startswith("bare")]
ENTRIES += [f"{method}-{kind}" for method in ("blend", "contrast") for kind in L2_KINDS]
_on_gpu: dict[int, tuple[Any, Any]] = {}


def _synced(fn: Any) -> Any:
    def run() -> Any:
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def _extras(docs: np.ndarray, povs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stage 2's scores of every candidate (blend) and two reference sets of P statements (contrast)."""
    relevance = np.random.default_rng(4).standard_normal(docs.shape[:-1], dtype=np.float32)
    return relevance, [_unit_batch((1, len(povs)), seed)[0] for seed in (5, 6)]


def _method_fn(entry: str, docs: np.ndarray, povs: np.ndarray) -> Any:
    """`blend-<kind>` and `contrast-<kind>`: the call of that method as `<kind>` calls pov_scores."""
    method, kind = entry.split("-", 1)
    relevance, refs = _extras(docs, povs)
    unit = kind.endswith("-unit")
    on = kind.removesuffix("-unit")
    if on == "numpy":
        d, p, rel, rs = docs, povs, relevance, refs
    else:
        to = "cuda" if on == "cuda" else "cpu"
        if on == "cuda":
            if id(docs) not in _on_gpu:
                _on_gpu.clear()
                _on_gpu[id(docs)] = (torch.from_numpy(docs).cuda(), torch.from_numpy(povs).cuda())
            d, p = _on_gpu[id(docs)]
        else:
            d, p = torch.from_numpy(docs), torch.from_numpy(povs)
        rel, rs = torch.from_numpy(relevance).to(to), [torch.from_numpy(r).to(to) for r in refs]
    if method == "blend":
        fn = lambda: blend_scores(d, p, rel, weight=0.5, assume_normalized=unit)  # noqa: E731
    else:
        fn = lambda: contrast_scores(d, p, rs, assume_normalized=unit)  # noqa: E731
    return _synced(fn) if on == "cuda" else fn


def _fn(entry: str, docs: np.ndarray, povs: np.ndarray) -> Any:
    if entry.startswith(("blend-", "contrast-")):
        return _method_fn(entry, docs, povs)
    docs_t, povs_t = torch.from_numpy(docs), torch.from_numpy(povs)
    flat, flat_t = docs.reshape(-1, D), docs_t.reshape(-1, D)
    if entry.endswith("cuda") or entry.startswith("cuda"):
        if id(docs) not in _on_gpu:  # copied to the GPU once per shape, outside the timing
            _on_gpu.clear()
            _on_gpu[id(docs)] = (docs_t.cuda(), povs_t.cuda())
        docs_g, povs_g = _on_gpu[id(docs)]
        flat_g = docs_g.reshape(-1, D)
        return _synced(
            {
                "cuda": lambda: pov_scores(docs_g, povs_g),
                "cuda-unit": lambda: pov_scores(docs_g, povs_g, assume_normalized=True),
                "bare-cuda": lambda: flat_g @ povs_g.T,
            }[entry]
        )
    return {
        "loop": lambda: reference_pov(docs, povs),
        "numpy": lambda: pov_scores(docs, povs),
        "numpy-unit": lambda: pov_scores(docs, povs, assume_normalized=True),
        "torch": lambda: pov_scores(docs_t, povs_t),
        "torch-unit": lambda: pov_scores(docs_t, povs_t, assume_normalized=True),
        "bare-numpy": lambda: flat @ povs.T,
        "bare-torch": lambda: flat_t @ povs_t.T,
    }[entry]


@pytest.mark.parametrize("entry", ENTRIES)
def test_notebook_shape(benchmark: Any, entry: str, notebook_docs: np.ndarray, povs: np.ndarray) -> None:
    fn = _fn(entry, notebook_docs, povs)
    out = _run(benchmark, f"notebook {_label(NOTEBOOK)}", fn, 5 if entry == "loop" else 200, NOTEBOOK)
    assert tuple(out.shape) in (NOTEBOOK, (NOTEBOOK[0] * NOTEBOOK[1], P))


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e != "loop"])
def test_large_shape(benchmark: Any, entry: str, large_docs: np.ndarray, povs: np.ndarray) -> None:
    fn = _fn(entry, large_docs, povs)
    name = "large" if LARGE == LARGE_FULL else "large (FALLBACK: not enough free memory)"
    out = _run(benchmark, f"{name} {_label(LARGE)}", fn, 50 if "cuda" in entry else 15, LARGE)
    assert tuple(out.shape) in (LARGE, (LARGE[0] * LARGE[1], P))


BARE = {"numpy": "bare-numpy", "numpy-unit": "bare-numpy", "torch": "bare-torch", "torch-unit": "bare-torch"}
BARE |= {"cuda": "bare-cuda", "cuda-unit": "bare-cuda", "bare-torch": "bare-numpy"}


def _baseline_fns(ref: str, docs: np.ndarray, povs: np.ndarray) -> dict[str, Any]:
    """`numpy@REF` and `numpy-unit@REF`: scoring.py as it was at `ref`, loaded under its own module name."""
    import importlib.util

    from interleave import baseline_tree

    path = baseline_tree(ref) / "runner" / "retrieval" / "scoring.py"
    spec = importlib.util.spec_from_file_location(f"baseline_scoring_{ref}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {
        f"numpy@{ref}": lambda: module.pov_scores(docs, povs),
        f"numpy-unit@{ref}": lambda: module.pov_scores(docs, povs, assume_normalized=True),
    }


def entries_for(shape: tuple[int, int], names: list[str], baseline: str | None = None) -> dict[str, Any]:
    docs, povs = (_unit_batch(shape, 3), _unit_batch((1, P), 1)[0])
    fns = {e: _fn(e, docs, povs) for e in names}
    if baseline:
        fns |= _baseline_fns(baseline, docs, povs)
    return fns


def pairs_for(names: list[str]) -> list[tuple[str, str]]:
    """The ratios reported: the loop over each scoring entry (the speed-up), each entry over its bare product."""
    pairs = [("loop", e) for e in names if e != "loop" and not e.startswith("bare") and "loop" in names]
    pairs += [(e, BARE[e]) for e in names if e in BARE and BARE[e] in names]
    pairs += [(e, "bare-numpy") for e in names if "@" in e and "bare-numpy" in names]
    pairs += [
        (e, e.split("-", 1)[1])
        for e in names
        if e.startswith(("blend-", "contrast-")) and e.split("-", 1)[1] in names
    ]
    return pairs


@pytest.mark.parametrize("shape_name", ["notebook", "large"])
def test_interleaved(benchmark: Any, shape_name: str) -> None:
    """Every entry in each round; the table gives each one's per-round ratio to its reference."""
    from interleave import bench

    shape = NOTEBOOK if shape_name == "notebook" else LARGE
    names = [e for e in ENTRIES if not (e == "loop" and shape_name == "large")]
    fns = entries_for(shape, names)
    rounds = 20 if shape_name == "notebook" else 10
    benchmark.group = f"interleaved {shape_name} {_label(shape)}"
    bench(benchmark, fns, pairs_for(list(fns)), rounds, benchmark.group)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from interleave import cpu_hogs, figures, interleave, table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=["notebook", "large"])
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default 30 / 10)")
    parser.add_argument("--runs", type=int, default=1, help="separate interleaved runs, one line each")
    parser.add_argument("--hogs", type=int, default=0, help="CPU-spinning processes beside the runs")
    parser.add_argument("--baseline", metavar="REF", help="also time scoring.py as it was at this git ref")
    parser.add_argument("--entries", nargs="*", help="default: all (no loop at the large shape)")
    parser.add_argument("--n", type=int, help="questions at the large shape (default: 20,000, or 2,000)")
    args = parser.parse_args(argv)
    shape = NOTEBOOK if args.shape == "notebook" else (args.n or LARGE[0], LARGE[1])
    names = args.entries or [e for e in ENTRIES if not (e == "loop" and args.shape == "large")]
    rounds = args.rounds or (30 if args.shape == "notebook" else 10)
    fns = entries_for(shape, names, args.baseline)
    pairs = pairs_for(list(fns))
    import os

    print(
        f"{_label(shape)}: {args.runs} run(s) of {rounds} interleaved rounds; {args.hogs} CPU hog(s); "
        f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    with cpu_hogs(args.hogs):
        for run in range(args.runs):
            times = interleave(fns, rounds)
            if args.runs == 1:
                print(table(times, pairs, f"run {run + 1}"))
                continue
            got = figures(times, pairs)
            parts = [f"{a}/{b} {got[f'{a} / {b}']['median']:.3g}" for a, b in pairs]
            print(f"run {run + 1:>2} (medians of per-round ratios): " + "; ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
