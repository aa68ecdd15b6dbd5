"""Hugging Face transformers: AutoModelForCausalLM on the CPU or a GPU, batched with left padding.

Each row of a batch is timed on its own: a stopping criterion that stops nothing stamps the end of every
generation step, and a row's latency runs from the batch's start to the step that produced its last token.
With `generation.compile: true` the decode steps run through a static cache and torch.compile
(runner.generation.backends.compiled says how batches are shaped for it).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.generation.backends.base import GenerationOut, prompt_budget, truncate_left
from runner.generation.backends.compiled import cache_length, compile_config, padded_rows

if TYPE_CHECKING:
    from runner.spec import Generation as GenerationParams
    from runner.spec import Model


def warm_imports() -> None:
    """Import what loading needs (seconds of a worker's start), before the model is asked for."""
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: F401


def pick_device(wanted: str, offered: str | None) -> str:
    """The torch device to use: the model's own choice (`cpu`, `cuda`, `auto`) against what the executor
    offers this worker (`cpu`, `cuda:N`, or None when nothing was assigned)."""
    import torch

    if wanted == "cpu":
        return "cpu"
    if offered and offered not in ("auto", "cpu"):
        return offered
    if offered == "cpu" and wanted == "auto":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if wanted == "cuda":
        raise RuntimeError("the model asks for device: cuda, but no CUDA GPU is visible to this worker")
    return "cpu"


def pick_dtype(name: str, device: str) -> Any:
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        # A T4 has no bfloat16; float16 is what such cards run fast (float32 would not fit the models at all).
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class EncodedBatch:
    """A batch ready for the model: left-padded ids and mask on the CPU, and each prompt's kept ids."""

    input_ids: Any
    """One row per prompt, then (when compiling) filler rows that repeat the last prompt."""
    mask: Any
    rows: list[tuple[list[int], bool]]
    """Per prompt: the ids fed to the model and whether the prompt lost its beginning."""
    width: int
    params: GenerationParams


class TransformersBackend:
    """Loads the model once; `generate` answers a batch of prompts in one `model.generate` call."""

    compiles = True
    """Whether `generation.compile: true` can be honoured (a subclass whose model transformers cannot compile
    says False, and such a batch fails instead of silently running eagerly)."""

    def __init__(self, model: Model, device: str | None = None) -> None:
        self.spec = model
        # A transformers tokenizer changes its settings per call, and runner.generation.prefetch encodes the next
        # batch in a thread while this one decodes.
        self._tokenizer_lock = threading.Lock()
        self.device = pick_device(model.device, device)
        self.dtype = pick_dtype(model.dtype, self.device)
        started = time.perf_counter()
        self.model, self.tokenizer = self._load()
        self.load_s = time.perf_counter() - started
        self._prepare_tokenizer()
        self._compile_config: Any = None

    # -- loading ---------------------------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        kwargs: dict[str, Any] = {"revision": self.spec.revision, "dtype": self.dtype}
        if self.spec.load_in_4bit:
            if not self.device.startswith("cuda"):
                raise RuntimeError(
                    "load_in_4bit needs a CUDA GPU (bitsandbytes); set load_in_4bit: false on CPU"
                )
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=self.dtype
            )
            kwargs["device_map"] = {"": self.device}
        model = AutoModelForCausalLM.from_pretrained(self.spec.name, **kwargs)
        if not self.spec.load_in_4bit:
            model = model.to(self.device)  # type: ignore[arg-type]
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(self.spec.name, revision=self.spec.revision)
        return model, tokenizer

    def _prepare_tokenizer(self) -> None:
        tok = self.tokenizer
        # Left padding keeps every prompt's last token next to the first generated one.
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            if tok.eos_token_id is None:
                raise RuntimeError(
                    f"tokenizer of {self.spec.name} has neither a pad nor an end-of-sequence token"
                )
            tok.pad_token = tok.eos_token
        has_template = bool(getattr(tok, "chat_template", None))
        if self.spec.chat_template and not has_template:
            raise RuntimeError(
                f"chat_template: true, but the tokenizer of {self.spec.name} has no chat template"
            )
        self.use_chat_template = has_template if self.spec.chat_template is None else self.spec.chat_template
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}

    # -- prompts ---------------------------------------------------------------------------------------------
    def render(self, prompt: str) -> str:
        """The text the model sees: the prompt inside the chat template when one is used."""
        if not self.use_chat_template:
            return prompt
        return str(
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        )

    def encode(self, prompt: str) -> list[int]:
        # A chat template writes its own BOS; adding special tokens again would double it.
        with self._tokenizer_lock:
            ids = self.tokenizer(self.render(prompt), add_special_tokens=not self.use_chat_template)
        return list(ids["input_ids"])

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation ------------------------------------------------------------------------------------------
    def _generation_config(self, params: GenerationParams) -> Any:
        from transformers import GenerationConfig

        # A fresh config, so a checkpoint's own generation_config.json (often sampling) never leaks in.
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "min_new_tokens": params.min_new_tokens,
            "repetition_penalty": params.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.eos_ids) or None,
            "do_sample": params.temperature > 0,
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.compile:
            if self._compile_config is None:
                self._compile_config = compile_config(self.device)
            kwargs.update(cache_implementation="static", compile_config=self._compile_config)
        return GenerationConfig(**kwargs)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[GenerationOut]:
        return self.generate_encoded(self.encode_batch(prompts, params))

    def encode_batch(self, prompts: list[str], params: GenerationParams) -> EncodedBatch:
        """Template, tokenizer and left-padded tensors on the CPU: all of a batch's work before the model,
        so that runner.generation.prefetch can do it for the next batch while this one generates."""
        import torch

        budget = prompt_budget(self.spec, params)
        bos = self.tokenizer.bos_token_id
        with self._tokenizer_lock:
            # One call for the batch: the Rust tokenizer encodes it without holding the GIL.
            encoded = self.tokenizer(
                [self.render(p) for p in prompts], add_special_tokens=not self.use_chat_template
            )
        rows = [truncate_left(list(ids), budget, bos) for ids in encoded["input_ids"]]
        width = max(len(ids) for ids, _ in rows)
        n = padded_rows(len(rows), params.batch_size) if params.compile else len(rows)
        input_ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i in range(n):
            ids = rows[min(i, len(rows) - 1)][0]
            if ids:
                input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[i, width - len(ids) :] = 1
        return EncodedBatch(input_ids, mask, rows, width, params)

    def generate_encoded(self, batch: EncodedBatch) -> list[GenerationOut]:
        import torch
        from transformers import StoppingCriteriaList

        params, width = batch.params, batch.width
        if params.compile and (not self.compiles or self.spec.load_in_4bit):
            raise RuntimeError(
                f"generation.compile: true, but {type(self).__name__} with load_in_4bit={self.spec.load_in_4bit} "
                "cannot be compiled; set generation.compile: false"
            )
        config = self._generation_config(params)
        if params.compile:
            config.max_cache_len = cache_length(width + params.max_new_tokens, self.spec.max_seq_length)
        if params.temperature > 0:
            # Seeded per batch: the same batch with the same seed samples the same tokens.
            torch.manual_seed(params.seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(params.seed)
        on_gpu = self.device.startswith("cuda")
        input_ids, mask = batch.input_ids.to(self.model.device), batch.mask.to(self.model.device)
        clock = step_clock_class()(self.device)
        if on_gpu:
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        clock.start()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([clock]),
            )
        if on_gpu:
            torch.cuda.synchronize(self.device)
        latency = time.perf_counter() - started
        answers = out[: len(batch.rows), width:].tolist()  # one copy from the device; filler rows dropped
        lengths = [next((j + 1 for j, t in enumerate(new) if t in self.eos_ids), len(new)) for new in answers]
        with self._tokenizer_lock:
            texts = self.tokenizer.batch_decode(
                [new[:n] for new, n in zip(answers, lengths, strict=True)], skip_special_tokens=True
            )
        outs = []
        for text, n, (ids, truncated), row in zip(
            texts, lengths, batch.rows, row_latencies(clock.seconds(), lengths, latency), strict=True
        ):
            own = latency if row is None else row
            speed = n / own if own > 0 else 0.0
            batch_s = None if row is None else latency
            outs.append(GenerationOut(text, len(ids), n, own, speed, truncated, batch_latency_s=batch_s))
        return outs

    def info(self) -> dict[str, float]:
        footprint = (
            float(self.model.get_memory_footprint()) if hasattr(self.model, "get_memory_footprint") else 0.0
        )
        return {"model_memory_mb": footprint / 2**20, "model_load_s": self.load_s}


def row_latencies(steps: list[float], lengths: list[int], batch_s: float) -> list[float | None]:
    """Per row: seconds from the batch's start to the end of the step that made its last token (its
    `lengths[i]`-th), given when each step ended. All None when the steps do not cover every row (a
    `generate` that called no stopping criterion): the batch is then timed as a whole, never guessed."""
    if not lengths or any(n < 1 or n > len(steps) for n in lengths):
        return [None] * len(lengths)
    return [min(steps[n - 1], batch_s) for n in lengths]


@functools.cache
def step_clock_class() -> type:
    """The StepClock class (built on first use: the base class is transformers', imported lazily)."""
    import torch
    from transformers import StoppingCriteria

    class StepClock(StoppingCriteria):  # type: ignore[misc]
        """Stamps the end of every generation step; `generate` calls it once per step, after appending the
        step's token to every row. Stops nothing: it answers all-False, so the output is what it would be
        without it. On a GPU it records CUDA events (no host sync per step) read after the batch."""

        def __init__(self, device: str) -> None:
            self.cuda = device.startswith("cuda") and torch.cuda.is_available()
            self.stream = torch.cuda.current_stream(device) if self.cuda else None
            self.origin: Any = None
            self.stamps: list[Any] = []

        def _now(self) -> Any:
            if not self.cuda:
                return time.perf_counter()
            event = torch.cuda.Event(enable_timing=True)
            event.record(self.stream)
            return event

        def start(self) -> None:
            self.origin, self.stamps = self._now(), []

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            self.stamps.append(self._now())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        def seconds(self) -> list[float]:
            """Seconds from `start` to the end of each step (on a GPU, once the device has finished)."""
            if self.cuda:
                return [self.origin.elapsed_time(e) / 1000.0 for e in self.stamps]
            return [t - self.origin for t in self.stamps]

    return StepClock


def load_tokenizer(model: Model) -> Any:
    """The model's tokenizer alone (for counting tokens in the parent process)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.name, revision=model.revision)
