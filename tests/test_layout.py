"""The package's shape as users and plug-in authors meet it: public faces, the plug-in registry, and the one
listing of corpus files that ingest, the manifest and the tiny-model builder share."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

import runner
from runner.errors import UserError
from runner.registry import BACKENDS, EMBEDDERS, EXECUTORS, Plugin, Registry

PACKAGES = ("spec", "retrieval", "generation", "run", "tracking", "report")


@pytest.mark.parametrize("name", PACKAGES)
def test_every_stage_has_a_curated_public_face(name: str) -> None:
    package = importlib.import_module(f"runner.{name}")
    exported = getattr(package, "__all__", None)
    assert exported, f"runner.{name} declares no __all__"
    assert len(exported) == len(set(exported))
    for attr in exported:
        assert hasattr(package, attr), f"runner.{name}.__all__ names {attr!r}, which it does not define"


def test_the_top_level_api_resolves_lazily_without_heavy_imports() -> None:
    code = (
        "import sys, runner\n"
        "heavy = ('torch', 'chromadb', 'mlflow', 'transformers', 'sentence_transformers')\n"
        "assert not [m for m in heavy if m in sys.modules], 'import runner pulled in a heavy module'\n"
        "for name in runner.__all__:\n"
        "    getattr(runner, name)\n"
        "print(runner.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    from importlib.metadata import version

    assert done.stdout.strip() == version("pov-runner"), "one version source: the package metadata"
    with pytest.raises(AttributeError):
        runner.no_such_name  # noqa: B018


def test_registries_name_what_is_known_and_what_is_missing() -> None:
    assert {"transformers", "unsloth"} <= set(BACKENDS.names())
    assert {"sentence-transformers", "cohere"} <= set(EMBEDDERS.names())
    assert set(EXECUTORS.names()) == {"local", "ray", "serve"}
    with pytest.raises(UserError, match=r"unknown executor 'locl' \(did you mean 'local'\?\)"):
        EXECUTORS.load("locl")
    # A plug-in whose SDK is not installed: the error names the extra that installs it.
    fake = Registry("generation backend", {"vllm": Plugin("pov_no_such_sdk.backend:Backend", extra="vllm")})
    with pytest.raises(
        UserError, match=r"needs the 'pov_no_such_sdk' package: pip install 'pov-runner\[vllm\]'"
    ):
        fake.load("vllm")
    # A broken import inside the runner itself is a bug, not a missing dependency: it is not disguised.
    broken = Registry("executor", {"x": Plugin("runner.no_such_module:X")})
    with pytest.raises(ModuleNotFoundError):
        broken.load("x")
    assert EXECUTORS.load("runner.generation.executors.local:LocalExecutor").__name__ == "LocalExecutor"


def test_one_corpus_listing_leaves_hidden_files_out_everywhere(tmp_path: Path) -> None:
    """Ingest, the manifest's fingerprint and the tiny model's tokenizer all read the same files: an editor's
    hidden scratch file must change none of them (the manifest once counted it, so resuming warned of a
    corpus drift that ingest never saw)."""
    from runner.generation.tinymodel import training_files
    from runner.run.manifest import corpus_info
    from runner.spec import load_spec, read_corpus

    corpus = tmp_path / "corpus"
    shutil.copytree(REPO / "data" / "brics", corpus)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        (REPO / "experiments" / "tiny.yaml")
        .read_text()
        .replace("extends: base.yaml", f"extends: {REPO / 'experiments' / 'base.yaml'}")
        + f"corpus: {{path: {corpus}, collection: hidden-test}}\n"
    )
    exp = load_spec(spec)
    before = (
        corpus_info(exp)["fingerprint"],
        training_files(corpus),
        [f.rel for f in read_corpus(corpus, exp.spec.corpus.include).files],
    )
    (corpus / ".notes.md").write_text("# scratch\n\nan editor's hidden file, never part of the corpus\n")
    (corpus / ".git").mkdir()
    (corpus / ".git" / "HEAD.md").write_text("ref: refs/heads/main\n")
    after = (
        corpus_info(exp)["fingerprint"],
        training_files(corpus),
        [f.rel for f in read_corpus(corpus, exp.spec.corpus.include).files],
    )
    assert after == before
    (corpus / "07_new.md").write_text("A new file that is part of the corpus changes the fingerprint.\n")
    assert corpus_info(exp)["fingerprint"] != before[0]
