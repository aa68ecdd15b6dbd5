"""The `pov` commands that need no model: --help, validate and plan, on the repository's own experiments.

Expected cells are computed here from the spec files with plain PyYAML, not through the runner."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner import cli

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
AXES = ("model", "template", "persona", "pov_set", "k", "question")
HEAVY = ("torch", "chromadb", "mlflow", "transformers", "sentence_transformers", "cohere", "ray")


def pov(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("pov")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "runner.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120, **kw)


def expected_seed_replica_cells() -> set[tuple[Any, ...]]:
    """The seed replica's cells from its YAML alone: product of the matrix lists minus the exclude rules."""
    spec = yaml.safe_load((EXPERIMENTS / "seed_replica.yaml").read_text())
    base = yaml.safe_load((EXPERIMENTS / spec["extends"]).read_text())
    m = spec["matrix"]
    questions_file = EXPERIMENTS / (spec.get("questions") or base["questions"])
    question_ids = [q["id"] for q in yaml.safe_load(questions_file.read_text())["questions"]]
    values = {
        "model": m["model"],
        "template": m["template"],
        "persona": m["persona"],
        "pov_set": m["pov_set"],
        "k": [tuple(k) for k in m["k"]],
        "question": question_ids if m["question"] == "all" else m["question"],
    }
    product = set(itertools.product(*(values[a] for a in AXES)))
    for rule in m.get("exclude", []):
        assert "k" not in rule  # keep this oracle simple; the matrix tests cover k rules
        product = {c for c in product if not all(c[AXES.index(a)] == v for a, v in rule.items())}
    return product


def test_help_lists_every_command() -> None:
    proc = pov("--help")
    assert proc.returncode == 0, proc.stderr
    for command in cli.COMMANDS:
        assert command in proc.stdout


def test_validate_every_experiment() -> None:
    specs = sorted(str(p.relative_to(REPO)) for p in EXPERIMENTS.glob("*.yaml"))
    assert specs
    proc = pov("validate", *specs)
    assert proc.returncode == 0, proc.stderr
    for spec in specs:
        assert f"{spec}: ok" in proc.stdout


def test_validate_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(EXPERIMENTS / "tiny.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_plan_json_lines_carry_every_axis_value() -> None:
    proc = pov("plan", "experiments/seed_replica.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    # The spec declares no scoring method: every cell scores stage 3 with the default, the notebook's `l2`.
    assert all(set(row) == {"id", *AXES, "pov_score"} and row["pov_score"] == "l2" for row in rows)
    got = [tuple(tuple(r[a]) if a == "k" else r[a] for a in AXES) for r in rows]
    expected = expected_seed_replica_cells()
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    assert len({r["id"] for r in rows}) == len(rows)


def test_plan_table_shows_the_count() -> None:
    proc = pov("plan", "experiments/seed_replica.yaml", "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    n = len(expected_seed_replica_cells())
    assert f"seed-replica: {n} cells" in proc.stdout
    assert f"{n - 5} more" in proc.stdout


def test_plan_set_overrides_an_axis() -> None:
    proc = pov("plan", "experiments/seed_replica.yaml", "--json", "--set", "matrix.persona=[professor]")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = {c for c in expected_seed_replica_cells() if c[AXES.index("persona")] == "professor"}
    assert {r["persona"] for r in rows} == {"professor"}
    assert len(rows) == len(expected)


def test_plan_json_into_a_closed_pipe_is_quiet() -> None:
    """`pov plan --json | head -1` must not end in a BrokenPipeError traceback."""
    script = Path(sys.executable).with_name("pov")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "runner.cli"]
    many_k = (
        "matrix.k=[" + ", ".join(f"[20, {k2}, 1]" for k2 in range(10, 20)) + "]"
    )  # > a pipe buffer of JSON
    proc = subprocess.Popen(
        [*cmd, "plan", "experiments/base.yaml", "--json", "--set", many_k],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert json.loads(first)["id"]
    assert "Traceback" not in err


def test_plan_of_a_bad_spec_exits_2_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"extends: {EXPERIMENTS / 'base.yaml'}\nmatrix:\n  k: [[5, 10, 3]]\n")
    proc = pov("plan", str(spec))
    assert proc.returncode == 2
    assert f"{spec}:3:" in proc.stderr and "Traceback" not in proc.stderr


def test_argument_errors_exit_2() -> None:
    proc = pov("plan", "experiments/seed_replica.yaml", "--limit", "-1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


LIGHT_CHECK = textwrap.dedent(
    """
    import json, sys
    from runner import cli
    try:
        cli.main(sys.argv[1:])
    except SystemExit:
        pass
    heavy = {heavy!r}
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
    """
).format(heavy=HEAVY)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        [
            "validate",
            "experiments/base.yaml",
            "experiments/quickstart.yaml",
            "experiments/tiny.yaml",
            "experiments/seed_replica.yaml",
        ],
        ["plan", "experiments/seed_replica.yaml"],
        ["plan", "experiments/seed_replica.yaml", "--json"],
    ],
    ids=["help", "validate", "plan", "plan-json"],
)
def test_light_commands_import_nothing_heavy(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_CHECK, *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`pov {' '.join(argv)}` imported {loaded}"


NO_TORCH_CHECK = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from conftest import StubRetriever
    import runner.generation.executors.local as local
    import runner.run.engine as engine
    local.GPU_DRIVER_FILES = (sys.executable,)  # a file that exists: as if a GPU driver were installed
    engine.open_retriever = lambda exp: StubRetriever()  # retrieval's own imports are not the question
    from runner import cli
    code = cli.main(sys.argv[1:])
    heavy = ("torch", "transformers", "sentence_transformers", "mlflow")
    print(json.dumps([code, sorted(m for m in sys.modules if m.split(".")[0] in heavy)]))
    """
).format(tests=str(Path(__file__).resolve().parent))


def test_a_cpu_only_run_imports_no_torch_in_the_parent(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`pov run` imported torch in its parent only to count GPUs (1.5 s before the worker was started). A
    spec whose models all run on the CPU needs no GPU counted, even on a machine with a GPU driver."""
    from conftest import gen_spec

    spec = gen_spec(tmp_path, tiny_model_dir, questions=1, personas=1, pov_sets=1)
    args = ["run", str(spec), "--no-track", "--quiet", "--set", "generation.max_new_tokens=2"]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_CHECK, *args], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    code, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert code == 0, proc.stderr
    assert loaded == [], f"the parent of a CPU-only `pov run` imported {loaded}"


# ---- pov run: what can be checked is checked before an execution is created --------------------------------


def _run_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 2-cell spec in its own project, tracked in a sqlite store there. Its model folder is empty: nothing
    here gets as far as loading a model."""
    from conftest import gen_spec

    (tmp_path / "model").mkdir()
    spec = gen_spec(tmp_path, tmp_path / "model", questions=2, personas=1, pov_sets=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return spec


def _executions(db: Path) -> int:
    """MLflow runs in the store (read with sqlite3, so that a store never created counts as empty)."""
    import sqlite3

    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]) if "runs" in tables else 0


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without Ray


def _no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def _corpus_without_ingestible_files(spec: Path) -> None:
    corpus = spec.parent / "corpus"
    corpus.mkdir()
    (corpus / "weights.bin").write_bytes(b"\0\1\2")
    spec.write_text(spec.read_text().replace(f"path: {REPO / 'data' / 'brics'}", f"path: {corpus}"))


@pytest.mark.parametrize(
    ("args", "setup", "message"),
    [
        (["--gpus", "3"], _no_gpus, "--gpus 3: only 0 GPU(s) are visible"),
        (["--executor", "serve"], None, "no `pov serve` is running"),
        (["--executor", "ray"], _no_ray, "the ray executor needs Ray"),
        ([], "corpus", "no ingestible files in"),
    ],
    ids=["gpus-without-gpus", "serve-without-server", "ray-not-installed", "corpus-without-files"],
)
def test_pov_run_checks_before_it_starts_and_a_failure_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    setup: Any,
    message: str,
) -> None:
    spec = _run_project(tmp_path, monkeypatch)
    if setup == "corpus":
        _corpus_without_ingestible_files(spec)
    elif setup is not None:
        setup(monkeypatch)
    code = cli.main(["run", str(spec), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert _executions(tmp_path / "mlflow.db") == 0, "an execution was created before the check failed"
    assert not (tmp_path / ".pov" / "runs").exists(), "a run folder was written before the check failed"


LEAVE_CHECK = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from runner.cli import leave
    pool = ThreadPoolExecutor(1)  # its idle worker ends only when told to (as MLflow's artifact pool's does)
    pool.submit(print, "pooled", end=";").result()
    atexit.register(lambda: print("atexit ran", flush=True))
    worker = threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished")))
    worker.start()
    sys.stdout.write("unflushed;")
    leave(3)
    """
)


def test_leaving_skips_only_the_teardown() -> None:
    """`pov` leaves with os._exit to skip the interpreter's teardown of its modules; what a normal exit does
    for the program must still happen, in order: an idle thread pool is let go, a running thread finishes,
    atexit handlers run, buffered output is written, and the exit code is the command's."""
    proc = subprocess.run([sys.executable, "-c", LEAVE_CHECK], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split("\n") == ["pooled;unflushed;thread finished", "atexit ran", ""], proc.stdout


HUB_CHECK = textwrap.dedent(
    """
    import json, sys
    from runner.generation.model_files import hub_snapshot
    found = hub_snapshot(sys.argv[1], None)
    print(json.dumps([str(found) if found else None, "huggingface_hub" in sys.modules]))
    """
)


def test_hub_models_not_in_the_cache_are_answered_without_huggingface_hub(tmp_path: Path) -> None:
    """The run manifest asks the hub cache for the embedder's snapshot; a model in no cache folder is
    answered without importing huggingface_hub, and one that is cached is still found, through it."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--cached" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--org--cached" / "refs").mkdir()
    (cache / "models--org--cached" / "refs" / "main").write_text("a" * 40)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "XDG_"))}
    env.update(
        HF_HOME=str(tmp_path / "home"), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HOME=str(tmp_path)
    )

    def ask(name: str) -> list[Any]:
        proc = subprocess.run(
            [sys.executable, "-c", HUB_CHECK, name], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        return list(json.loads(proc.stdout.strip().splitlines()[-1]))

    assert ask("org/absent") == [None, False]
    assert ask("org/cached") == [str(snapshot), True]
