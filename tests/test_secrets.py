"""Secrets (CO_API_KEY, anything named like a key or token) reach no MLflow table, artifact or log file."""

from __future__ import annotations

import json
import logging
import os
import secrets as pysecrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from runner.redaction import RedactingFilter, install_log_redaction, is_secret_name, redact, secret_values

ROOT = Path(__file__).resolve().parent.parent
POV = str(Path(sys.executable).parent / "pov")


@pytest.fixture()
def keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "CO_API_KEY": "co-" + pysecrets.token_hex(16),
        "MY_SERVICE_TOKEN": "tok_" + pysecrets.token_hex(12),
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.mark.parametrize(
    "name",
    [
        "CO_API_KEY",
        "MY_SERVICE_TOKEN",
        "HF_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_TRACKING_PASSWORD",
        "github_pat",
        "openaiApiKey",
        "db.password",
    ],
)
def test_names_that_are_secrets(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "TOKENIZERS_PARALLELISM",
        "PWD",
        "KEYBOARD_LAYOUT",
        "HF_HUB_OFFLINE",
        "PATH",
        "MONKEY_BUSINESS",
        "SSH_AUTH_SOCK",
    ],
)
def test_names_that_are_not(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_finds_values_escaped_forms_urls_and_token_shapes(keys: dict[str, str]) -> None:
    key, tok = keys["CO_API_KEY"], keys["MY_SERVICE_TOKEN"]
    text = (
        f"key={key} token:{tok} in json {json.dumps({'k': key + chr(34)})} "
        "url https://alice:hunter2pass@example.org/x hf_" + "a" * 34 + " Bearer abcdefghijklmnopqrstu"
    )
    out = redact(text)
    for leaked in (key, tok, "hunter2pass", "hf_" + "a" * 34, "abcdefghijklmnopqrstu"):
        assert leaked not in out
    assert "[redacted CO_API_KEY]" in out and "[redacted MY_SERVICE_TOKEN]" in out
    assert "https://alice:[redacted]@example.org/x" in out
    assert (
        redact("nothing secret here: TOKENIZERS_PARALLELISM=false")
        == "nothing secret here: TOKENIZERS_PARALLELISM=false"
    )
    assert set(secret_values()) >= {key, tok}


def test_log_records_are_redacted(keys: dict[str, str], tmp_path: Path) -> None:
    logger = logging.getLogger("pov-secrets-test")
    logger.propagate = False
    handler = logging.FileHandler(tmp_path / "log.txt")
    logger.addHandler(handler)
    install_log_redaction(logger)
    try:
        logger.warning("calling the API with %s", keys["CO_API_KEY"])
        try:
            raise RuntimeError(f"auth failed for {keys['MY_SERVICE_TOKEN']}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        handler.close()
        logger.removeHandler(handler)
    text = (tmp_path / "log.txt").read_text()
    assert "[redacted CO_API_KEY]" in text and "[redacted MY_SERVICE_TOKEN]" in text
    assert keys["CO_API_KEY"] not in text and keys["MY_SERVICE_TOKEN"] not in text
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)


def _leaks(root: Path, db: Path, values: list[str]) -> list[str]:
    """Every place under `root` (files) and in `db` (every row of every table) that holds a secret."""
    found = []
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        assert "runs" in tables and "tags" in tables and "params" in tables
        for table in tables:
            for row in con.execute(f'select * from "{table}"'):
                text = " ".join(str(v) for v in row)
                found += [f"table {table}: {row!r}"[:300] for v in values if v in text]
    for path in root.rglob("*"):
        if path.is_file() and path != db and path.suffix not in (".bin", ".sqlite3", ".safetensors"):
            data = path.read_bytes()
            found += [str(path) for v in values if v.encode() in data]
    return found


def test_tracker_redacts_everything_it_writes(
    keys: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from runner.run import CellResult
    from runner.spec import expand, load_spec
    from runner.tracking import MlflowTracker, Tags

    monkeypatch.chdir(tmp_path)
    key, tok = keys["CO_API_KEY"], keys["MY_SERVICE_TOKEN"]
    exp = load_spec(ROOT / "experiments" / "tiny.yaml")
    exp.spec.description = f"uses {key}"
    exp.spec.personas["professor"] = f"You are a professor. Your token is {tok}."
    manifest = {
        "git": {"commit": key},
        "note": {"api_key": key, "env": f"MY_SERVICE_TOKEN={tok}"},
        "gpu": {"name": tok},
        "corpus": {"fingerprint": key},
    }
    cells = expand(exp)[:3]
    results = []
    for i, cell in enumerate(cells):
        crashed = i == 2
        results.append(
            CellResult(
                cell=cell,
                status="crashed" if crashed else "finished",
                prompt=f"persona {tok} question",
                context={
                    "stages": [{"name": "vector", "ids": ["a"], "texts": [f"chunk {key}"], "scores": [0.5]}]
                },
                output=None if crashed else f"answer mentioning {key}",
                cause="exception" if crashed else None,
                error=f"AuthError: bad key {key}" if crashed else None,
                stderr_tail=f"env: CO_API_KEY={key}\nMY_SERVICE_TOKEN={tok}" if crashed else None,
                metrics={"latency_s": 1.0},
                tags={"note": f"token {tok}", Tags.check(tok): "pass"},
            )
        )
    t = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "secrets")
    t.start(exp, cells, manifest)
    t.log(results)
    t.finish({})
    logging.getLogger("runner").warning("finished with key %s", key)
    t2 = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "secrets")
    t2.start(exp, cells, manifest, fresh=True)  # a second execution: artifacts and tags written again
    t2.finish({})

    assert _leaks(tmp_path, tmp_path / "mlflow.db", [key, tok]) == []
    out, err = capfd.readouterr()
    assert key not in out + err and tok not in out + err
    # Redaction replaced the secrets rather than dropping what held them.
    prompts = list(tmp_path.glob("mlruns/*/*/artifacts/prompt.txt"))
    assert prompts and all("[redacted MY_SERVICE_TOKEN]" in p.read_text() for p in prompts)
    stderr = list(tmp_path.glob("mlruns/*/*/artifacts/stderr.txt"))
    assert len(stderr) == 1 and "CO_API_KEY=[redacted CO_API_KEY]" in stderr[0].read_text()


@pytest.mark.slow
def test_pov_run_leaks_no_secret(tmp_path: Path) -> None:
    """A real `pov run` with keys in the environment and (by mistake) in the spec."""
    key, tok = "co-" + pysecrets.token_hex(16), "tok_" + pysecrets.token_hex(12)
    (tmp_path / "spec.yaml").write_text(f"""\
name: secretstest
description: "remember to export CO_API_KEY={key}"
extends: {ROOT / "experiments" / "tiny.yaml"}
personas:
  professor: "You are a professor who once leaked the token {tok}."
generation: {{max_new_tokens: 4, temperature: 0.0, seed: 0, batch_size: 2}}
matrix:
  template: [opinion_only]
  persona: [professor]
  pov_set: [global_south]
  question: [japan-alliances, brics-growth-drivers]
  exclude: []
faults:
  - {{cause: exception, match: {{question: brics-growth-drivers}}}}
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        HF_HUB_OFFLINE="1",
        CO_API_KEY=key,
        MY_SERVICE_TOKEN=tok,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
    )
    logs = []
    for args in (["ingest", "spec.yaml"], ["run", "spec.yaml", "--quiet"]):
        done = subprocess.run(
            [POV, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr
        logs.append(done.stdout + done.stderr)
    (tmp_path / "console.log").write_text("\n".join(logs))
    spec = str(tmp_path / "spec.yaml")  # the user's own file, where they put the secrets
    leaks = [p for p in _leaks(tmp_path, tmp_path / "mlflow.db", [key, tok]) if p != spec]
    assert leaks == []
    crashed = list(tmp_path.glob("mlruns/*/*/artifacts/stderr.txt"))
    assert len(crashed) == 1  # the fault ran, so a crash record was written and checked too
    assert any(
        "[redacted MY_SERVICE_TOKEN]" in p.read_text()
        for p in tmp_path.glob("mlruns/*/*/artifacts/prompt.txt")
    )


@pytest.mark.parametrize(
    "template",
    [
        "{key}",  # no `=`: the whole argument is echoed
        "corpus.chroma_url=[http://u:{key}@host",  # YAML syntax error
        "matrix.persona=[http://alice:hunter2pass@host/]",  # unknown persona, named with its value
        "matrix.question=[https://host/x?api_key=hunter2pass]",
        "generation.max_new_tokens.x={key}",  # cannot descend into an int
        "tracking.api_key=[hunter2pass",  # a secret-named key: its value is not shown, whatever it looks like
    ],
)
def test_a_bad_set_argument_is_echoed_redacted(
    template: str, keys: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every message built from a --set argument goes through redaction: an environment secret, a URL's
    password or a secret-named query parameter never reaches the terminal."""
    from runner.cli import main as cli

    key = keys["CO_API_KEY"]
    arg = template.format(key=key)
    assert cli(["validate", str(ROOT / "experiments" / "tiny.yaml"), "--set", arg]) == 2
    err = capsys.readouterr().err
    assert "--set" in err or "matrix" in err or "tracking" in err, err
    assert key not in err and "hunter2pass" not in err, err


def test_redacting_a_long_token_before_a_url_takes_linear_time() -> None:
    """Everything recorded goes through redact(): a 1 MB run of letters before a `://` once cost a scan per
    position (quadratic: 40 KB took 2 s, 1 MB most of an hour)."""
    code = (
        "from runner.redaction import redact\n"
        "out = redact('a' * 1_000_000 + ' https://alice:hunter2pass@example.org/?token=hunter2pass')\n"
        "assert 'hunter2pass' not in out and out.endswith('alice:[redacted]@example.org/?token=[redacted]')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_an_inference_servers_api_key_is_sent_only_as_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Backend openai: the key named by api_key_env goes to the server as `Authorization: Bearer` and nowhere
    else: not into a param, tag, artifact (the manifest, a crash's error), the run folder or the terminal,
    even when the server quotes it back in an error."""
    from conftest import StubRetriever
    from openai_stub import Stub

    from runner.run.engine import run_experiment
    from runner.spec import expand, load_spec
    from runner.tracking import MlflowTracker

    key = "sk-" + pysecrets.token_hex(20)
    monkeypatch.setenv("STUB_SERVER_API_KEY", key)
    monkeypatch.chdir(tmp_path)
    stub = Stub(delay_s=0.0, key=key)
    try:
        (tmp_path / "ask.j2").write_text("{{ question }}\n")
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"""\
name: keytest
corpus: {{path: {ROOT / "data" / "brics"}, collection: keytest}}
questions:
  - {{id: plain, text: 'What is trade?'}}
  - {{id: echo, text: '[echo-key] Who are you?'}}
pov_sets: {{p: ['Trade matters.']}}
personas: {{a: 'You are brief.'}}
templates: {{ask: {tmp_path / "ask.j2"}}}
models:
  remote: {{backend: openai, name: stub-model, base_url: "{stub.url}", api_key_env: STUB_SERVER_API_KEY}}
generation: {{max_new_tokens: 4, batch_size: 2}}
""")
        exp = load_spec(spec)
        tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "keytest")
        summary = run_experiment(exp, expand(exp), tracker, retriever=StubRetriever(), quiet=True)
    finally:
        stub.close()
    assert (summary.finished, summary.crashed) == (1, 1)
    assert {r["auth"] for r in stub.requests} == {f"Bearer {key}"}  # the key was used, as the header
    assert _leaks(tmp_path, tmp_path / "mlflow.db", [key]) == []
    out, err = capfd.readouterr()
    assert key not in out + err
    stderr = list(tmp_path.glob("mlruns/*/*/artifacts/stderr.txt"))
    assert len(stderr) == 1 and "rejected Bearer [redacted STUB_SERVER_API_KEY]" in stderr[0].read_text()
