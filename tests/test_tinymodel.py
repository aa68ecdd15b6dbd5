"""The tiny Llama builder: deterministic, loadable like a real checkpoint, atomic, reused by specs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, gen_spec

from runner.errors import UserError
from runner.generation import TinyDims, build_tiny, resolve_model


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_gives_byte_identical_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(tiny_model_dir)
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(
        _digests(again)
    )


def test_another_seed_changes_the_weights_not_the_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = _digests(build_tiny(tmp_path / "seed1", seed=1))
    base = _digests(tiny_model_dir)
    assert other["model.safetensors"] != base["model.safetensors"]
    assert other["tokenizer.json"] == base["tokenizer.json"]


def test_loads_like_any_checkpoint(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert cfg.vocab_size == len(tok) == 2000
    assert sum(p.numel() for p in model.parameters()) < 1_000_000  # tiny: fast on a CPU
    text = "Local-currency settlement and the dollar's role in BRICS trade."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level BPE: every string round-trips
    assert len(ids) < len(text) / 2  # merges were learned from the corpus
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s>[INST] Hi [/INST]"
    assert {tok.bos_token, tok.eos_token, tok.pad_token} == {"<s>", "</s>", "<pad>"}


def test_bigger_dims_and_a_wide_embedding(tmp_path: Path) -> None:
    import json

    out = build_tiny(
        tmp_path / "wide",
        dims=TinyDims(hidden=128, layers=1, heads=8, kv_heads=2, vocab=4096),
        corpus=REPO / "data" / "brics" / "01_brics_expansion.md",
        dtype="bfloat16",
    )
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (128, 2, 4096)
    assert cfg["dtype"] == "bfloat16"


def test_a_build_killed_halfway_leaves_no_model(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "tiny"
    # Stall the build right after the weights are written, then kill it for real.
    script = (
        "import time, transformers\n"
        "orig = transformers.PreTrainedModel.save_pretrained\n"
        "def slow(self, *a, **k):\n"
        "    orig(self, *a, **k); print('saved', flush=True); time.sleep(60)\n"
        "transformers.PreTrainedModel.save_pretrained = slow\n"
        "from runner.generation.tinymodel import build_tiny\n"
        f"build_tiny({str(dest)!r})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "saved"
        temps = list(dest.parent.glob(".tiny.tmp-*"))
        assert len(temps) == 1 and (temps[0] / "model.safetensors").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert not dest.exists()
    # The next build ignores the debris and completes.
    build_tiny(dest)
    assert (dest / "config.json").exists() and (dest / "tokenizer.json").exists()


def test_a_build_that_fails_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def broken(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        build_tiny(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_and_needs_a_corpus(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="already exists"):
        build_tiny(tiny_model_dir)
    with pytest.raises(UserError, match="corpus not found"):
        build_tiny(tmp_path / "x", corpus=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no files matching"):
        build_tiny(tmp_path / "x", corpus=tmp_path / "empty")


def test_builtin_is_built_once_per_corpus_and_reused(tmp_path: Path) -> None:
    from runner.spec import load_spec

    exp = load_spec(gen_spec(tmp_path, Path("builtin:tiny-llama")))
    model = exp.spec.models["tiny"]
    first = Path(resolve_model(exp, model).name)
    assert first.parent == exp.state_dir / "models" and first.name.startswith("tiny-llama-")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    assert Path(resolve_model(exp, model).name) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert resolve_model(exp, model).max_seq_length == model.max_seq_length
    unknown = model.model_copy(update={"name": "builtin:huge-llama"})
    with pytest.raises(UserError, match="unknown builtin model"):
        resolve_model(exp, unknown)


def test_pov_models_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner import cli

    out = tmp_path / "m"
    assert (
        cli.main(
            [
                "models",
                "tiny",
                str(out),
                "--seed",
                "5",
                "--corpus",
                str(REPO / "data" / "brics" / "02_dedollarisation.md"),
            ]
        )
        == 0
    )
    assert "revision sha256:" in capsys.readouterr().out
    assert (out / "model.safetensors").exists()
    assert cli.main(["models", "tiny", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["models", "tiny", str(tmp_path / "n"), "--hidden", "30", "--heads", "4"]) == 2
