"""The experiment spec: pydantic models with a docstring per field.

A spec is a YAML file in git; `runner.spec.loader.load_spec` reads it (with `extends` and `--set`), validates it
against these models, checks cross-references and templates, and returns an `Experiment`: the spec plus
the content of every file it names, so that the rest of the runner never touches the spec's files again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from runner.spec.fields import NAME_RE, Setting, Strict, _persona, _question
from runner.spec.model_schema import Model
from runner.spec.retrieval_schema import (
    DEFAULT_POV_SCORE,
    Corpus,
    Embedder,
    PovScore,
    QueryReranker,
)

AXES = ("model", "template", "persona", "pov_set", "pov_score", "k", "question")
"""Matrix axes, in the order cells are listed."""


class Question(Strict):
    id: str = Field(pattern=NAME_RE.pattern)
    """Short stable id used in the matrix and in reports."""
    text: Annotated[str, AfterValidator(_question)]
    """The question as the model sees it."""


class Generation(Strict):
    max_new_tokens: int = Field(512, ge=1)
    """Most tokens generated per answer."""
    min_new_tokens: int = Field(0, ge=0)
    """Fewest tokens generated (set equal to max_new_tokens for fixed-length benchmarks)."""
    temperature: float = Field(0.0, ge=0.0)
    """0 decodes greedily; above 0 samples, seeded by `seed`."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (sampling only)."""
    repetition_penalty: float = Field(1.0, gt=0.0)
    """Penalty for repeated tokens (1.0 is none)."""
    seed: int = 0
    """Seed for sampling and for anything random in a cell."""
    batch_size: int = Field(8, ge=1, le=1024)
    """Prompts generated together in one call."""
    batch_invariant: bool = False
    """Generate every cell alone (batch 1): slower, but no answer can depend on the prompts it shared a batch
    with (padding, kernels). Cells get other ids than in batches (like another `batch_size`)."""
    compile: bool = False
    """Decode with a static KV cache and a `torch.compile`d forward (CUDA graphs on a GPU): faster decoding
    once compiled, after tens of seconds of compilation for each new batch shape. Batches are shaped to reuse
    the compiled graphs: the cache is a quarter, half, three quarters or all of the model's max_seq_length,
    and a batch of more than one prompt is filled up to batch_size (a lone prompt stays alone). Needs
    `backend: transformers` without `load_in_4bit` (transformers compiles neither Unsloth's patched models nor
    bitsandbytes 4-bit layers)."""

    @model_validator(mode="after")
    def _min_le_max(self) -> Generation:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must not exceed max_new_tokens")
        return self


AxisValues = Literal["all"] | list[str]
KSchedule = list[int]


class Matrix(Strict):
    model: AxisValues = "all"
    """Model names to run, or `all`."""
    template: AxisValues = "all"
    """Template names, or `all`."""
    persona: AxisValues = "all"
    """Persona names, or `all`."""
    pov_set: AxisValues = "all"
    """POV set names, or `all`."""
    pov_score: AxisValues = "all"
    """Stage-3 scoring methods (names in `pov_scores`), or `all`."""
    k: list[KSchedule] = [[15, 10, 5]]
    """Stage sizes `[k1, k2, k3]`: vector search, query rerank, POV rerank; k1 >= k2 >= k3 >= 1."""
    question: AxisValues = "all"
    """Question ids, or `all`."""
    exclude: list[dict[str, Any]] = []
    """Partial cells to drop: every axis given must match (e.g. `{template: a, persona: b}`)."""
    include: list[dict[str, Any]] = []
    """Extra cells to add; each names every axis but `question` and `pov_score` (default all); a list value
    expands."""
    zip: list[list[str]] = []
    """Groups of axes that advance together instead of as a product: `[[question, pov_set]]` runs the first
    question with the first POV set, the second with the second, and so on. The axes of a group list the same
    number of values (`all` counts the declared ones, in declaration order); `exclude` cannot name them."""
    repeat: int = 1
    """Runs of each cell. Repeat r > 0 of a cell has its own id (repeat 0 keeps the id the cell has without
    repeats) and the seed `repeat_seed(generation.seed, r)`; batches never mix repeats."""

    @field_validator("repeat", mode="before")
    @classmethod
    def _repeat(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"repeat is how many times each cell runs, a whole number, got {v!r}")
        if v < 1:
            raise ValueError(f"repeat is how many times each cell runs: 1 or more, got {v}")
        return v

    @field_validator("model", "template", "persona", "pov_set", "pov_score", "question", mode="before")
    @classmethod
    def _axis_form(cls, v: Any) -> Any:
        # Without this a lone name reads "Input should be 'all'", which hides the fix.
        if isinstance(v, str) and v != "all":
            raise ValueError(f"an axis is `all` or a list of names: write [{v}]")
        if not isinstance(v, (str, list)):
            raise ValueError(f"an axis is `all` or a list of names, got {v!r}")
        return v

    @field_validator("k")
    @classmethod
    def _k_schedules(cls, v: list[KSchedule]) -> list[KSchedule]:
        if not v:
            raise ValueError("at least one k schedule is needed")
        for sched in v:
            check_k(sched)
        return v


def check_k(sched: Any) -> None:
    """Raise ValueError unless `sched` is three whole numbers k1 >= k2 >= k3 >= 1."""
    if not isinstance(sched, list) or len(sched) != 3 or not all(isinstance(x, int) for x in sched):
        raise ValueError(f"a k schedule is three whole numbers [k1, k2, k3], got {sched!r}")
    k1, k2, k3 = sched
    if min(sched) < 1:
        raise ValueError(f"k schedule {sched}: every stage keeps at least 1 chunk")
    if not k1 >= k2 >= k3:
        raise ValueError(f"k schedule {sched}: stages can only narrow (k1 >= k2 >= k3)")


class Limits(Strict):
    cell_timeout_s: float = Field(600.0, gt=0)
    """A batch that runs longer than this many seconds per cell is killed and recorded as `timeout`."""
    gpu_memory_gb: float | None = Field(None, gt=0)
    """Cap on the worker's CUDA memory, so a large GPU can stand in for a small one."""
    max_worker_restarts: int = Field(100, ge=0)
    """Crashed workers restarted before the remaining cells are marked `crashed` without running."""
    max_memory_retries: int = Field(256, ge=0)
    """Smaller batches tried per model group after out-of-memory crashes (`cuda_oom`, `killed`): a batch
    that runs out of memory is split in halves, down to one cell. Once these are used up, a batch that runs
    out of memory has its cells recorded crashed without trying smaller ones."""


class Tracking(Strict):
    experiment: Setting | None = None
    """MLflow experiment name; default the spec's name."""
    uri: Setting | None = None
    """Tracking URI; MLFLOW_TRACKING_URI wins; default MLflow's own (`sqlite:///mlflow.db`)."""
    traces: bool = True
    """Also record each cell as an MLflow trace (retriever spans for the three stages, an LLM span for the
    answer), so that MLflow's trace view shows the RAG flow; `false` records child runs only."""


class Executor(Strict):
    kind: Literal["local", "ray", "serve"] = "local"
    """`local` (one worker process per GPU; the project's `pov serve` instead when one is running and no
    `gpus` are named), `ray` (Ray actors) or `serve` (only the project's `pov serve`)."""
    gpus: list[int] | None = None
    """GPU indices for the local executor; default all visible, else the CPU."""
    address: Setting | None = None
    """Ray cluster address (`auto`, `ray://host:10001`); default starts a local Ray."""
    num_gpus: float = Field(1.0, ge=0)
    """GPUs per Ray actor; fractions let small models share a GPU."""
    workers: int | None = Field(None, ge=1)
    """Ray actors (or CPU workers) to run; default one per GPU, else one."""
    resources: dict[str, float] = {}
    """Ray custom resources each actor asks for, on top of its GPUs: `{gpu_box: 1}` places actors only on
    nodes started with `ray start --resources '{"gpu_box": 1}'`. A name no node offers fails the run
    before any model loads."""
    split_groups: bool = True
    """Ray: share a model group out over several actors, whole batches each, when there are more actors
    than model groups (24 cells on 3 GPUs: 3 actors, each loading the model once). Batches are cut as
    for one actor, so the answers are the same."""
    model_files: Literal["auto", "ship", "shared"] = "auto"
    """Ray: how a model folder reaches the actors. `ship`: the driver sends the folder through Ray's
    object store and each node unpacks it into its own cache ($POV_NODE_CACHE, else the node's temp
    folder), so no node reads the driver's paths; `shared`: the folder's path is the same on every node
    (a shared file system, or the same image); `auto`: `ship` on a cluster named by `address`, `shared`
    for a Ray started by the run. A model named by hub id is loaded by that id on each node."""
    node_retries: int = Field(3, ge=0)
    """Ray: times a batch whose node died under it (the raylet or the whole host lost) is run again, on
    an actor that Ray places on a live node, before its cells are recorded crashed with cause
    `node_lost`."""


class Checks(Strict):
    duplication_cosine: float = Field(0.85, ge=0, le=1)
    """Sections whose embeddings are at least this similar are flagged as duplicates."""
    duplication_overlap: float = Field(0.6, ge=0, le=1)
    """Sections whose word-trigram overlap ratio is at least this are flagged as duplicates."""
    word_tolerance: float = Field(0.0, ge=0)
    """Slack on declared word ranges, as a fraction (0.1 accepts 10% outside)."""
    repetition_ratio: float = Field(0.5, gt=0, le=1)
    """An answer whose distinct-trigram ratio is below this is flagged degenerate."""
    loop_window_ratio: float = Field(0.75, gt=0, le=1)
    """An answer with a window of 48 tokens whose distinct-trigram ratio is below this is flagged
    degenerate: a loop after a sensible start (prose scores about 0.95 in every window)."""
    pov_retention: float = Field(0.8, ge=0)
    """An answer whose POV score is below this fraction of its context chunks' mean score lost the
    edge the POV rerank selected for."""
    copied_share: float = Field(0.5, gt=0, le=1)
    """An answer with at least this share of its word 8-grams found verbatim in its context copied the
    passages instead of answering (small models do; it also inflates the POV retention)."""


class Fault(Strict):
    """A deliberate fault, for testing crash handling end to end."""

    cause: Literal["segfault", "abort", "killed", "exception", "timeout", "cuda_oom"]
    """What the worker does when it meets a matching cell."""
    match: dict[str, Any] = {}
    """Axis values a cell must have (as in `matrix.exclude`); empty matches every cell."""
    rate: float = Field(1.0, ge=0, le=1)
    """Fraction of matching cells (chosen by a hash of the cell id, so the choice is stable)."""
    above_batch_tokens: int | None = Field(None, ge=1)
    """Fire only when the batch holding the cell is larger than this many prompt tokens (batch size times
    its padded prompt length): a stand-in for a memory limit, so out-of-memory handling can be tested on the
    CPU. Unset fires on every batch that holds the cell."""


class Spec(Strict):
    name: str = Field(pattern=NAME_RE.pattern)
    """Experiment name (letters, digits, `_`, `-`, `.`)."""
    description: str = ""
    """What this experiment is for."""
    extends: str | None = None
    """Another spec file to deep-merge under this one (this file wins)."""
    corpus: Corpus
    """The documents to retrieve from."""
    embedder: Embedder = Embedder()
    """Embeds stored chunks and stage-1 queries."""
    reranker: Embedder | None = None
    """Embeds for stages 2 and 3; default the embedder (its stored vectors are reused)."""
    query_reranker: QueryReranker | None = None
    """Scores stage 2 with a rerank model (a cross-encoder or Cohere rerank) reading each (question, chunk)
    pair, instead of the reranker's cosine; stage 3 still uses the reranker's embeddings."""
    questions: Path | list[Question]
    """A YAML file with `questions: [{id, text}]`, or the list inline."""
    pov_sets: dict[str, Path | list[str]]
    """Named sets of short POV statements: a YAML file with `statements: [...]`, or a list inline."""
    pov_scores: dict[str, PovScore] = {DEFAULT_POV_SCORE: PovScore()}
    """Named stage-3 scoring methods, the values of matrix.pov_score: a method name (`l2`, `blend`,
    `contrast`) or `{method, weight, reference}`; default one, `l2` (the notebook's)."""
    personas: dict[str, Annotated[str, AfterValidator(_persona)]]
    """Named persona texts, put first in the prompt."""
    templates: dict[str, Path]
    """Named Jinja2 template files."""
    models: dict[str, Model]
    """Named models."""
    generation: Generation = Generation()
    """Decoding parameters shared by every cell."""
    matrix: Matrix = Matrix()
    """Which combinations to run."""
    limits: Limits = Limits()
    """Timeouts and memory caps."""
    tracking: Tracking = Tracking()
    """Where runs are recorded."""
    executor: Executor = Executor()
    """Where generation runs."""
    checks: Checks = Checks()
    """Thresholds of the per-cell output checks."""
    faults: list[Fault] = []
    """Injected faults (testing only)."""

    @field_validator("personas", "templates", "models", "pov_sets", "pov_scores")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("declare at least one")
        for key in v:
            if not isinstance(key, str) or not NAME_RE.match(key):
                raise ValueError(f"name {key!r} must be letters, digits, '_', '-' or '.'")
        return v

    @field_validator("questions")
    @classmethod
    def _questions(cls, v: Path | list[Question]) -> Path | list[Question]:
        if isinstance(v, list) and not v:
            raise ValueError("no questions: give at least one {id, text}, or a questions file")
        return v

    @property
    def effective_reranker(self) -> Embedder:
        return self.reranker or self.embedder
