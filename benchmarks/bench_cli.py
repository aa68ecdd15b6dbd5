"""Start-up cost of the light commands, measured as a user meets it: a fresh `pov` process each round.

Target: each under 1 s on the 2-core development machine. Run with

    pytest benchmarks/bench_cli.py -p no:cacheprovider

(pytest-benchmark prints min/mean/max per benchmark; nothing here asserts a time.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.errors import SpecError
from runner.spec.safe_yaml import parse_yaml

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 5

MODELS, TEMPLATES, PERSONAS, POV_SETS, KS = 1, 2, 5, 5, 2
QUESTIONS = 10  # data/brics/questions.yaml
CELLS = MODELS * TEMPLATES * PERSONAS * POV_SETS * KS * QUESTIONS


def _pov(*args: str) -> Callable[[], subprocess.CompletedProcess[str]]:
    script = Path(sys.executable).with_name("pov")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "runner.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}

    def run() -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc

    return run


@pytest.fixture(scope="module")
def spec_1000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spec of exactly 1,000 cells over the repository's sample corpus, questions and templates."""
    brics = REPO / "data" / "brics"
    pov_sets = {f"file{i}": str(p) for i, p in enumerate(sorted(brics.glob("pov_*.yaml")))}
    for i in range(POV_SETS - len(pov_sets)):
        pov_sets[f"inline{i}"] = f"[Statement {i} one., Statement {i} two.]"
    lines = [
        "name: bench-1000",
        f"corpus: {{path: {brics}, collection: bench-col}}",
        f"questions: {brics / 'questions.yaml'}",
        "pov_sets:",
        *(f"  {name}: {value}" for name, value in pov_sets.items()),
        "personas:",
        *(f"  p{i}: You are persona number {i}." for i in range(PERSONAS)),
        "templates:",
        f"  summary_opinion: {REPO / 'templates' / 'summary_opinion.j2'}",
        f"  opinion_only: {REPO / 'templates' / 'opinion_only.j2'}",
        "models:",
        "  tiny: {name: 'builtin:tiny-llama'}",
        "matrix:",
        "  k: [[15, 10, 5], [15, 10, 3]]",
    ]
    spec = tmp_path_factory.mktemp("bench") / "bench_1000.yaml"
    spec.write_text("\n".join(lines) + "\n")
    proc = _pov("plan", str(spec), "--json")()
    assert len(proc.stdout.splitlines()) == CELLS
    return spec


def _bench(benchmark: Any, fn: Callable[[], Any]) -> Any:
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def test_help(benchmark: Any) -> None:
    proc = _bench(benchmark, _pov("--help"))
    assert "validate" in proc.stdout


def test_plan_1000_cells(benchmark: Any, spec_1000: Path) -> None:
    proc = _bench(benchmark, _pov("plan", str(spec_1000)))
    assert f"bench-1000: {CELLS} cells" in proc.stdout


def test_plan_json_1000_cells(benchmark: Any, spec_1000: Path) -> None:
    proc = _bench(benchmark, _pov("plan", str(spec_1000), "--json"))
    assert len(proc.stdout.splitlines()) == CELLS


def test_validate_1000_cells(benchmark: Any, spec_1000: Path) -> None:
    proc = _bench(benchmark, _pov("validate", str(spec_1000)))
    assert f"({CELLS} cells)" in proc.stdout


def test_alias_bomb_refused(benchmark: Any) -> None:
    """Billion laughs (9**9 values once expanded) must be refused without expanding it."""
    levels = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "\n".join(levels) + "\n"

    def refuse() -> str:
        with pytest.raises(SpecError) as err:
            parse_yaml(text, "bomb.yaml")
        return str(err.value)

    assert "alias bomb" in benchmark.pedantic(refuse, rounds=20, iterations=1, warmup_rounds=1)
