"""The one corpus reader: ingest, the manifest and the tiny-model builder read a corpus through
`runner.spec.corpus`, so they skip the same files for the same reasons, never read more than its limit, and
none of them raises for a file it cannot read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import runner.spec.corpus as reader
from runner.errors import UserError
from runner.generation import resolve_model, tinymodel
from runner.retrieval.chunking import corpus_fingerprint
from runner.run.manifest import corpus_info
from runner.spec import Experiment, SpecError, load_spec

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "tests" / "bad_specs" / "fixtures" / "base.yaml"
GOOD = REPO / "data" / "brics" / "01_brics_expansion.md"

# Reading /proc/self/mem at offset 0 fails with EIO for every user, root included (chmod 000 does not
# stop root, which is who runs the suite in some containers).
needs_proc = pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")


def _make_unreadable(path: Path) -> None:
    path.symlink_to("/proc/self/mem")


def _corpus(tmp_path: Path) -> Path:
    """One good file and one of each kind the reader skips."""
    root = tmp_path / "corpus"
    root.mkdir()
    shutil.copy(GOOD, root / "good.md")
    (root / "blob.md").write_bytes(b"PK\x03\x04\x00\x00binary")
    (root / "latin1.md").write_bytes("Line one\nCaf\u00e9 au lait\n".encode("latin-1"))
    (root / "empty.md").write_text("  \n\n")
    _make_unreadable(root / "locked.md")
    return root


def _experiment(tmp_path: Path, corpus: Path) -> Experiment:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"extends: {BASE}\nname: reader\ncorpus: {{path: {corpus}, collection: reader-test}}\n")
    return load_spec(spec)


@needs_proc
def test_manifest_records_skipped_files_with_their_reason(tmp_path: Path) -> None:
    exp = _experiment(tmp_path, _corpus(tmp_path))
    info = corpus_info(exp)
    files = info["files"]
    assert set(files) == {"good.md", "blob.md", "latin1.md", "empty.md", "locked.md"}
    assert files["good.md"] == hashlib.sha256(GOOD.read_bytes()).hexdigest()[:16]
    assert files["locked.md"].startswith("skipped: cannot read")
    assert files["blob.md"].startswith("skipped: binary")
    assert files["latin1.md"].startswith("skipped: not UTF-8")
    assert files["empty.md"].startswith("skipped: empty")
    assert info["fingerprint"] is not None


def test_a_repaired_file_changes_both_fingerprints(tmp_path: Path) -> None:
    """A skipped file is recorded by its reason, not its bytes; repairing it must still count as a change."""
    root = tmp_path / "corpus"
    root.mkdir()
    shutil.copy(GOOD, root / "good.md")
    (root / "latin1.md").write_bytes("Caf\u00e9 au lait, served hot.\n".encode("latin-1"))
    exp = _experiment(tmp_path, root)
    manifest_before = corpus_info(exp)["fingerprint"]
    ingest_before = corpus_fingerprint(root, ["*.md"], "c")
    (root / "latin1.md").write_text("Caf\u00e9 au lait, served hot.\n", encoding="utf-8")
    assert corpus_info(exp)["fingerprint"] != manifest_before
    assert corpus_fingerprint(root, ["*.md"], "c") != ingest_before


@needs_proc
def test_tiny_builder_trains_on_what_the_reader_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `builtin:tiny-llama`: the unreadable file neither raises (it did, from the builder's key and
    its training) nor is trained on, and neither are the binary, Latin-1, empty or oversized files."""
    root = _corpus(tmp_path)
    limit = GOOD.stat().st_size + 100
    monkeypatch.setattr(reader, "MAX_FILE_BYTES", limit, raising=False)
    (root / "huge.md").write_text(GOOD.read_text() * 2)
    exp = _experiment(tmp_path, root)
    built = Path(resolve_model(exp, exp.spec.models["tiny"]).name)
    assert json.loads((built / "pov_build.json").read_text())["corpus"] == ["good.md"]


def test_tiny_builder_trains_on_at_most_the_limit_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file is under the limit but together they are not: the tokenizer still sees at most the limit
    (a 200 MB corpus once drove the builder to 18.5 GB and the OOM killer)."""
    root = tmp_path / "corpus"
    root.mkdir()
    text = GOOD.read_text()
    for name in ("a.md", "b.md", "c.md"):
        (root / name).write_text(text)
    limit = 2 * len(text.encode())  # room for two files, not three
    monkeypatch.setattr(reader, "MAX_FILE_BYTES", limit, raising=False)
    seen: list[int] = []
    train = tinymodel._train_tokenizer

    def counting(texts: list[str], vocab: int) -> Any:
        seen.append(sum(len(t.encode()) for t in texts))
        return train(texts, vocab)

    monkeypatch.setattr(tinymodel, "_train_tokenizer", counting)
    tinymodel.build_tiny(tmp_path / "model", corpus=root)
    assert seen and 0 < seen[0] <= limit


def test_reader_refuses_a_file_over_the_limit_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.md"
    with big.open("wb") as f:  # sparse: costs no disk, and would cost 20 MB of memory to read
        f.truncate(reader.MAX_FILE_BYTES + 1)
    got = reader.read_source(big, "big.md")
    assert isinstance(got, reader.Skipped) and "larger than" in got.reason


@needs_proc
def test_ingest_manifest_and_builder_agree_on_the_files(tmp_path: Path) -> None:
    root = _corpus(tmp_path)
    exp = _experiment(tmp_path, root)
    read = reader.read_corpus(root, exp.spec.corpus.include)
    assert [f.rel for f in read.files] == ["good.md"]
    assert sorted(s.rel for s in read.skipped) == ["blob.md", "empty.md", "latin1.md", "locked.md"]
    hashed = [rel for rel, v in corpus_info(exp)["files"].items() if not v.startswith("skipped:")]
    assert hashed == ["good.md"]
    assert list(tinymodel.training_files(root).names) == ["good.md"]


def test_a_single_file_corpus_the_reader_refuses_is_a_clear_error(tmp_path: Path) -> None:
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"\x00\x01\x02")
    with pytest.raises(UserError, match="binary"):
        tinymodel.build_tiny(tmp_path / "model", corpus=blob)
    assert not (tmp_path / "model").exists()
    assert os.listdir(tmp_path) == ["blob.txt"]


def test_a_file_that_cannot_be_stat_ed_is_skipped_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file in a folder that can be listed but not searched (mode r-- for the user) fails `stat` with
    EACCES, which `Path.is_file` raises. Root is never refused, so that one `stat` is refused here."""
    root = tmp_path / "corpus"
    (root / "locked").mkdir(parents=True)
    shutil.copy(GOOD, root / "good.md")
    locked = root / "locked" / "x.md"
    locked.write_text("never readable")
    real_stat = Path.stat

    def stat(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    read = reader.read_corpus(root, ["*.md"])
    assert [f.rel for f in read.files] == ["good.md"]
    assert [str(s) for s in read.skipped] == ["locked/x.md: cannot read (Permission denied)"]


def test_an_empty_include_list_is_refused() -> None:
    with pytest.raises(SpecError, match="at least one pattern"):
        load_spec(BASE, ["corpus.include=[]"])


def test_include_patterns_stay_inside_the_corpus() -> None:
    for pattern in ("/abs/*.md", "../up/*.md", "sub/../../x.md"):
        with pytest.raises(SpecError) as err:
            load_spec(BASE, [f"corpus.include=['{pattern}']"])
        [problem] = err.value.problems
        assert problem.path == "corpus.include.0"
        assert "patterns are relative to corpus.path" in problem.message
    assert load_spec(BASE, ["corpus.include=['sub/*.md', '*.txt']"])
