"""A tiny random-weight Llama with a BPE tokenizer trained on the corpus, built locally and deterministically.

It lets the whole pipeline run offline anywhere (its answers are gibberish; everything around them is real),
and it is loaded through the same code path as a real checkpoint (`AutoModelForCausalLM.from_pretrained`).
The same seed, dims and corpus give byte-identical files. The corpus is read by the one corpus reader
(runner.spec.corpus): the files ingest would skip are skipped here too, and the tokenizer trains on at most
MAX_FILE_BYTES of text in all (training takes about 100 bytes of memory per byte: a 200 MB file once took
the builder to 18.5 GB and the OOM killer). Larger dims (`TinyDims(hidden=2048, ...)`) give
Llama-shaped models for GPU tests and benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import runner.spec.corpus as corpus_reader
from runner.errors import UserError
from runner.spec import Skipped, SourceFile, iter_corpus, read_source

if TYPE_CHECKING:
    from collections.abc import Iterable


BUILD_VERSION = 1
"""Bump when the builder's output changes, so specs get a fresh build rather than a stale one."""

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
# [INST]-style, like Llama 2 / Mistral: the prompt between [INST] and [/INST], the answer after it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% elif message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class TinyDims:
    """Shape of the model; the defaults keep CPU generation fast (about 0.4M parameters)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int | None = None
    """Key/value heads (grouped-query attention); default as many as heads."""
    intermediate: int | None = None
    """MLP width; default 2 x hidden."""
    vocab: int = 2000
    """Target tokenizer vocabulary; the embedding has at least this many rows even when the corpus is too
    small to learn that many merges (so a 32000-row benchmark model costs what a real one does)."""
    max_position: int = 8192


def default_corpus() -> Path:
    """data/brics beside the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "data" / "brics"


@dataclass(frozen=True)
class TrainingCorpus:
    """What the tokenizer is trained on, as the corpus reader reads it."""

    names: tuple[str, ...]
    """File names of the files whose text is trained on (recorded in pov_build.json)."""
    key: tuple[tuple[str, str], ...]
    """(file name, sha256 of its bytes) for every file read, trained on or beyond the budget."""
    texts: tuple[str, ...]
    """The text trained on: at most MAX_FILE_BYTES of UTF-8 in all."""
    truncated: bool
    """Whether the budget cut the text short (then the build key says so)."""
    skipped: tuple[Skipped, ...] = ()


def training_files(corpus: Path, include: tuple[str, ...] | list[str] = ("*.md", "*.txt")) -> TrainingCorpus:
    """The text the tokenizer is trained on: one file, or the corpus files of a folder, read as ingest
    reads them and cut to the reader's size limit in all."""
    if corpus.is_file():
        entries: list[SourceFile | Skipped] = [read_source(corpus, corpus.name)]
        if isinstance(entries[0], Skipped):
            raise UserError(f"{corpus}: {entries[0].reason}")
        return _within_budget(entries)
    if not corpus.is_dir():
        raise UserError(f"{corpus}: corpus not found (give a folder of .md/.txt files or one text file)")
    got = _within_budget(iter_corpus(corpus, include))
    if not got.names:
        why = "".join(f"\n  skipped {s}" for s in got.skipped)
        raise UserError(f"{corpus}: no files matching {', '.join(include)} to train the tokenizer on{why}")
    return got


def _within_budget(entries: Iterable[SourceFile | Skipped]) -> TrainingCorpus:
    budget = corpus_reader.MAX_FILE_BYTES  # looked up per call, like the reader's own limit
    names: list[str] = []
    key: list[tuple[str, str]] = []
    texts: list[str] = []
    skipped: list[Skipped] = []
    truncated = False
    for got in entries:  # one file's text in hand at a time, beyond what is kept
        if isinstance(got, Skipped):
            skipped.append(got)
            continue
        key.append((got.path.name, got.sha256))
        if budget <= 0:
            truncated = True
            continue
        raw = got.text.encode()
        if len(raw) > budget:
            truncated = True
            texts.append(raw[:budget].decode("utf-8", errors="ignore"))
        else:
            texts.append(got.text)
        budget -= len(raw)
        names.append(got.path.name)
    return TrainingCorpus(tuple(names), tuple(key), tuple(texts), truncated, tuple(skipped))


def _train_tokenizer(texts: list[str], vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Byte-level: every string encodes (no unknown tokens), whatever the prompt contains.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def build_tiny(
    out_dir: str | Path,
    *,
    seed: int = 0,
    corpus: str | Path | None = None,
    dims: TinyDims = TinyDims(),
    dtype: str = "float32",
    include: tuple[str, ...] | list[str] = ("*.md", "*.txt"),
) -> Path:
    """Build into a temporary folder beside `out_dir`, then rename it into place: a build killed halfway
    leaves no `out_dir` at all (only a `.tmp-*` folder that the next build ignores)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: already exists and is not empty; remove it or choose another folder")
    training = training_files(Path(corpus) if corpus else default_corpus(), include)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tokenizer = _train_tokenizer(list(training.texts), dims.vocab)
        special = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        config = LlamaConfig(
            vocab_size=max(dims.vocab, len(tokenizer)),
            hidden_size=dims.hidden,
            num_hidden_layers=dims.layers,
            num_attention_heads=dims.heads,
            num_key_value_heads=dims.kv_heads or dims.heads,
            intermediate_size=dims.intermediate or 2 * dims.hidden,
            max_position_embeddings=dims.max_position,
            bos_token_id=special["<s>"],
            eos_token_id=special["</s>"],
            pad_token_id=special["<pad>"],
            tie_word_embeddings=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model = model.to(getattr(torch, dtype))
        model.generation_config.pad_token_id = special["<pad>"]
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        portable_tokenizer_config(tmp / "tokenizer_config.json")
        (tmp / "pov_build.json").write_text(
            json.dumps(
                {
                    # A stored value: changing it changes every built model's files and so its revision.
                    "builder": "runner.tinymodel",
                    "version": BUILD_VERSION,
                    "seed": seed,
                    "dims": asdict(dims),
                    "dtype": dtype,
                    "corpus": list(training.names),
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
        try:
            os.rename(tmp, out)  # atomic; replaces an empty folder, fails on a full one
        except OSError:
            if not (out / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same build first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def portable_tokenizer_config(path: Path) -> None:
    """Name the tokenizer class every transformers release can load."""
    # transformers 5 writes its own class name, which 4.x (pinned by some GPU stacks) cannot load.
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def builtin_key(name: str, corpus: TrainingCorpus, seed: int, dims: TinyDims, dtype: str) -> str:
    """What a builtin build depends on: builder version, seed, dims and the bytes of the corpus files read
    (hashed as before the reader's budget existed, so earlier builds keep their folders)."""
    h = hashlib.sha256(
        json.dumps(
            {"v": BUILD_VERSION, "name": name, "seed": seed, "dims": asdict(dims), "dtype": dtype},
            sort_keys=True,
        ).encode()
    )
    for file_name, sha256 in corpus.key:
        h.update(file_name.encode() + b"\0" + bytes.fromhex(sha256))
    if corpus.truncated:
        h.update(f"\0budget={corpus_reader.MAX_FILE_BYTES}".encode())
    return h.hexdigest()[:12]
