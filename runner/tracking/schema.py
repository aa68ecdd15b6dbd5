"""The MLflow schema as code: the name of every tag, param, metric and artifact pov-runner writes, the values
its tags take, and the schema's version.

The tracker (runner.tracking.mlflow_tracker and .records), `pov rerun` and `pov report` read and write
MLflow only through these names, so this module is the one place that says what is stored. The names and
values are a stored format: stores written by earlier versions must stay readable, so a name here changes
only with a SCHEMA_VERSION bump and a reader that still understands the old one.

    python -m runner.tracking.schema > docs/mlflow-schema.md
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from runner import retrieval, run
from runner.spec import AXES

SCHEMA_VERSION = 1
"""Written on every execution (parent run) as the tag `pov.schema_version`, as the string "1".

Bump it when a reader of the runs would misread them otherwise: a tag, param, metric or artifact renamed or
removed, or a value that changes meaning. Adding a name is not a bump (readers ignore what they do not
know). After a bump, `pov run` starts a new execution rather than resume one of an older version, and the
report and `pov rerun` must keep reading the older versions (an execution without the tag is version 1:
it was written before the tag existed)."""


class Tags:
    """Tag names. `pov.*` are pov-runner's own; git.*, gpu.name, corpus.fingerprint and version.<pkg> copy
    the manifest so that the MLflow UI can filter on them; mlflow.* are MLflow's, set so its UI shows them."""

    KIND = "pov.kind"
    SCHEMA_VERSION = "pov.schema_version"
    SPEC_NAME = "pov.spec_name"
    SPEC_HASH = "pov.spec_hash"
    STATE = "pov.state"
    SESSIONS = "pov.sessions"
    RERUN_OF = "pov.rerun_of"
    CELL_ID = "pov.cell_id"
    STATUS = "pov.status"
    CAUSE = "pov.cause"
    ERROR = "pov.error"
    SUPERSEDED = "pov.superseded"
    RANKING_HASH = "pov.ranking_hash"
    OUTPUT_HASH = "pov.output_hash"
    BATCH_ID = "pov.batch_id"
    ATTEMPTS = "pov.attempts"
    BATCH_SENSITIVE = "pov.batch_sensitive"
    GIT_COMMIT = "git.commit"
    GIT_BRANCH = "git.branch"
    GIT_DIRTY = "git.dirty"
    GPU_NAME = "gpu.name"
    CORPUS_FINGERPRINT = "corpus.fingerprint"
    VERSION_PREFIX = "version."
    CHECK_PREFIX = run.CHECK_TAG_PREFIX
    PARENT_RUN_ID = "mlflow.parentRunId"
    SOURCE_TYPE = "mlflow.source.type"
    SOURCE_NAME = "mlflow.source.name"
    SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
    NOTE = "mlflow.note.content"

    @staticmethod
    def version(package: str) -> str:
        return Tags.VERSION_PREFIX + package

    @staticmethod
    def check(name: str) -> str:
        return Tags.CHECK_PREFIX + name

    @staticmethod
    def checks(tags: Mapping[str, str]) -> dict[str, str]:
        """The `check.<name>` tags of a cell, by check name."""
        return {
            k.removeprefix(Tags.CHECK_PREFIX): v for k, v in tags.items() if k.startswith(Tags.CHECK_PREFIX)
        }


class Kind:
    """Values of `pov.kind`."""

    EXECUTION = "execution"
    CELL = "cell"


class State:
    """Values of `pov.state` on an execution."""

    RUNNING = "running"
    """Under way, or killed while under way."""
    FINISHED = "finished"
    """Every cell has a live child run."""
    INTERRUPTED = "interrupted"
    """The runner stopped early on its own (Ctrl-C)."""


class Status:
    """Values of `pov.status` on a cell: runner.run.CellResult.status."""

    FINISHED = "finished"
    CRASHED = "crashed"


TRUE = "true"
"""Value of `pov.superseded` and of `git.dirty` (with FALSE)."""
FALSE = "false"
UNKNOWN = "unknown"
"""A git.* tag when the project is not a git checkout."""
NONE = "none"
"""`gpu.name` without a GPU, `corpus.fingerprint` without a corpus, a model without a revision."""
NOT_INSTALLED = "not installed"
"""A version.<pkg> tag for a package that is not installed."""
DEFAULT_CAUSE = "exception"
"""`pov.cause` of a crash the runner could not put a cause on."""
CHECK_PASS = run.CHECK_PASS
"""Value of a passed `check.<name>` tag (the run stage's checks write it)."""
CHECK_FAIL = run.CHECK_FAIL


class Params:
    """Param names. A cell also has one param per axis, named as the axis (runner.spec.AXES)."""

    SPEC_NAME = "spec_name"
    SPEC_HASH = "spec_hash"
    AXIS_PREFIX = "axis."
    CELL_ID = "cell_id"
    MODEL_NAME = "model_name"
    MODEL_REVISION = "model_revision"
    REPEAT = "repeat"
    BASE_CELL_ID = "base_cell_id"
    QUERY_RERANKER = "query_reranker"

    @staticmethod
    def axis(name: str) -> str:
        """The execution's param listing the values of one axis."""
        return Params.AXIS_PREFIX + name


class Metrics:
    """Metric names. An execution's are the tracker's totals; a cell's are runner.run.CellResult.metrics as
    the run stage names them (these are the ones the report reads), plus the retrieval stages' scores."""

    CELLS_TOTAL = "cells_total"
    CELLS_FINISHED = "cells_finished"
    CELLS_CRASHED = "cells_crashed"
    WALL_TIME_S = "wall_time_s"
    CRASHED_PREFIX = "crashed."
    SESSION_PREFIX = "session."
    STAGE_TOP_SCORE = "stage{n}_top_score"
    STAGE3_MEAN_SCORE = "stage3_mean_score"
    RELEVANCE_KEPT = retrieval.RELEVANCE_KEPT
    BEST_MATCH_RANK = retrieval.BEST_MATCH_RANK
    STANCE_SPECIFICITY = retrieval.STANCE_SPECIFICITY
    STAGE_BOILERPLATE_SHARE = retrieval.STAGE_BOILERPLATE_SHARE
    STAGE_TRUNCATED = retrieval.STAGE_TRUNCATED
    LATENCY_S = "latency_s"
    LATENCY_PER_CELL = "latency_per_cell"
    BATCH_LATENCY_S = "batch_latency_s"
    PROMPT_TOKENS = "prompt_tokens"
    COMPLEXITY_PROMPT_TOKENS = "complexity_prompt_tokens"
    TOKENS_PER_S = "tokens_per_s"
    GPU_PEAK_ALLOCATED_MB = "gpu_peak_allocated_mb"
    BATCH_SIZE = "batch_size"
    PADDED_PROMPT_TOKENS = "padded_prompt_tokens"
    BATCH_TOKENS = "batch_tokens"
    MEMORY_RETRIES = "memory_retries"
    SEED = "seed"
    HOST_RSS_MB = "host_rss_mb"
    RETRIES = "retries"
    SERVER_PROMPT_MS = "server_prompt_ms"
    SERVER_GENERATE_MS = "server_generate_ms"
    SERVER_TOKENS_PER_S = "server_tokens_per_s"
    SERVER_CACHED_TOKENS = "server_cached_tokens"

    @staticmethod
    def crashed(cause: str) -> str:
        return Metrics.CRASHED_PREFIX + cause

    @staticmethod
    def session(key: str) -> str:
        return Metrics.SESSION_PREFIX + key


class Artifacts:
    """Artifact names, relative to the run's artifact root."""

    SPEC = "spec.yaml"
    MANIFEST = "manifest.json"
    TEMPLATES = "templates"
    PROMPT = "prompt.txt"
    CONTEXT = "context.json"
    OUTPUT = "output.md"
    STDERR = "stderr.txt"
    BATCH = "batch.json"
    REPORT = "report"
    AUDIT = "audit"

    @staticmethod
    def template(name: str) -> str:
        return f"{Artifacts.TEMPLATES}/{name}.j2"

    @staticmethod
    def report_vs(run_id: str) -> str:
        """The folder of a `pov report --compare RUN_ID` on the first execution."""
        return f"{Artifacts.REPORT}-vs-{run_id}"


class Traces:
    """Names in a cell's MLflow trace (spec `tracking.traces`, on by default): one trace per cell, linked to
    its child run, with a root span and one child span per retrieval stage and for the generation; each
    name's meaning is in DOCS["Traces"]. Span types and the shape of the retrieved documents are MLflow's
    own (`mlflow.entities.SpanType`, `mlflow.entities.Document`), so that its trace view shows them."""

    NAME = "pov.cell"
    VECTOR = "vector_search"
    QUERY = "query_rerank"
    POV = "pov_rerank"
    GENERATE = "generate"
    STAGE_SPANS: ClassVar[Mapping[str, str]] = {"vector": VECTOR, "query": QUERY, "pov": POV}
    """Span name per retrieval stage name (runner.retrieval.STAGES)."""
    EXECUTION = "pov.execution"
    CELL_RUN = "pov.cell_run"
    STAGE = "pov.stage"
    K = "pov.k"
    STATEMENTS = "pov.statements"
    MODEL = "pov.model"
    ERROR = "pov.error"
    DOC_URI = "doc_uri"
    CHUNK_ID = "chunk_id"
    SCORE = "score"
    RANK = "rank"
    PREVIOUS_RANK = "previous_rank"
    SIMILARITIES = "pov_similarities"


def stored_version(tags: Mapping[str, str]) -> int:
    """The schema version an execution was written with (1 when it predates the tag)."""
    try:
        return int(tags.get(Tags.SCHEMA_VERSION, "1"))
    except ValueError:
        return 0  # not a version this runner wrote: matches none


# ---- the schema as a markdown page (docs/mlflow-schema.md) ----------------------------------------------

_EXEC, _CELL, _BOTH = "execution", "cell", "both"
_TAG_DOCS: dict[str, tuple[str, str]] = {
    Tags.KIND: (_BOTH, f"`{Kind.EXECUTION}` on a parent run, `{Kind.CELL}` on a child run"),
    Tags.SCHEMA_VERSION: (_EXEC, f"version of this schema (now `{SCHEMA_VERSION}`); absent means 1"),
    Tags.SPEC_NAME: (_EXEC, "the spec's `name`"),
    Tags.SPEC_HASH: (_EXEC, "hash of the resolved spec; `pov run` resumes an execution of the same hash"),
    Tags.STATE: (
        _EXEC,
        f"`{State.RUNNING}` (also after a kill), `{State.FINISHED}` (every cell has a live child), "
        f"`{State.INTERRUPTED}` (stopped early on its own)",
    ),
    Tags.SESSIONS: (_EXEC, "how many `pov run` sessions worked on the execution"),
    Tags.RERUN_OF: (_EXEC, "the execution a `pov rerun` ran again"),
    Tags.CELL_ID: (_CELL, "the cell's id (a hash of what it uses); pairs cells across executions"),
    Tags.STATUS: (_CELL, f"`{Status.FINISHED}` or `{Status.CRASHED}`; absent on a child left half-written"),
    Tags.CAUSE: (
        _CELL,
        f"a crash's cause (runner.generation.CAUSES, `server_died` included; `{DEFAULT_CAUSE}` when unknown)",
    ),
    Tags.ERROR: (_CELL, "a crash's message, cut to 500 characters"),
    Tags.SUPERSEDED: (_CELL, f"`{TRUE}` on a child that was redone; it is also deleted and KILLED or FAILED"),
    Tags.RANKING_HASH: (_CELL, "hash of the chunk ids of the three retrieval stages, in rank order"),
    Tags.OUTPUT_HASH: (_CELL, "hash of the generated answer (absent for a crash)"),
    Tags.BATCH_ID: (_CELL, "the attempt id of the batch the answer came from; cells of one batch share it"),
    Tags.ATTEMPTS: (
        _CELL,
        "JSON list of every generate call the cell took part in (runner.generation.Attempt.to_dict): "
        "size, padded and batch prompt tokens, outcome (`fitted` or a cause), peak memory, cap",
    ),
    Tags.BATCH_SENSITIVE: (
        _CELL,
        f"set by `pov audit`: `{TRUE}` when the answer changed when run alone, `{FALSE}` when it did not",
    ),
    Tags.GIT_COMMIT: (_EXEC, f"the project's git commit (`{UNKNOWN}` outside git)"),
    Tags.GIT_BRANCH: (_EXEC, "its branch"),
    Tags.GIT_DIRTY: (_EXEC, f"`{TRUE}` when it had uncommitted changes, else `{FALSE}`"),
    Tags.GPU_NAME: (_EXEC, f"the GPU's name (`{NONE}` without one)"),
    Tags.CORPUS_FINGERPRINT: (_EXEC, "hash of the corpus files' names and contents"),
    Tags.VERSION_PREFIX: (_EXEC, f"the package's version, or `{NOT_INSTALLED}`"),
    Tags.CHECK_PREFIX: (_CELL, f"an output check (runner.run.checks): `{CHECK_PASS}` or `{CHECK_FAIL}`"),
    Tags.PARENT_RUN_ID: (_CELL, "MLflow's link from a cell to its execution"),
    Tags.SOURCE_TYPE: (_EXEC, "MLflow's, for its UI"),
    Tags.SOURCE_NAME: (_EXEC, "MLflow's: the spec file"),
    Tags.SOURCE_GIT_COMMIT: (_EXEC, "MLflow's: the git commit"),
    Tags.NOTE: (_EXEC, "MLflow's description: the spec's `description`"),
}
_PARAM_DOCS: dict[str, tuple[str, str]] = {
    Params.SPEC_NAME: (_EXEC, "the spec's name"),
    Params.SPEC_HASH: (_EXEC, "the spec's hash"),
    Params.AXIS_PREFIX: (_EXEC, "the axis's values in this execution, comma-separated"),
    Params.CELL_ID: (_CELL, "the cell's id"),
    **{axis: (_CELL, "the cell's value on this axis") for axis in AXES},
    Params.MODEL_NAME: (_CELL, "the model as loaded (name or folder)"),
    Params.MODEL_REVISION: (_CELL, f"its revision or files hash (`{NONE}` if unknown)"),
    Params.REPEAT: (_CELL, "which run of the cell this is (`matrix.repeat`; 0 without repeats)"),
    Params.BASE_CELL_ID: (_CELL, "the id of repeat 0 of the cell (its own id on repeat 0)"),
    Params.QUERY_RERANKER: (
        _EXEC,
        f"stage 2's rerank model, `provider:model` (`{NONE}`: the reranker's cosine); its scores are not "
        "comparable across rerank model generations",
    ),
}
_METRIC_DOCS: dict[str, tuple[str, str]] = {
    Metrics.CELLS_TOTAL: (_EXEC, "cells in the execution"),
    Metrics.CELLS_FINISHED: (_EXEC, "cells with a finished live child"),
    Metrics.CELLS_CRASHED: (_EXEC, "cells with a crashed live child"),
    Metrics.WALL_TIME_S: (_EXEC, "seconds, over every session"),
    Metrics.CRASHED_PREFIX: (_EXEC, "crashed cells with this cause"),
    Metrics.SESSION_PREFIX: (_EXEC, "the last session's other summary numbers (runner.run.RunSummary)"),
    Metrics.STAGE_TOP_SCORE: (_CELL, "highest score of retrieval stage n (1: vector, 2: query, 3: POV)"),
    Metrics.STAGE3_MEAN_SCORE: (_CELL, "mean score of the POV stage's chunks"),
    Metrics.RELEVANCE_KEPT: (_CELL, "share of the POV stage's chunks among the query stage's first k3"),
    Metrics.BEST_MATCH_RANK: (
        _CELL,
        "rank the query stage's best chunk ended at in the POV stage's order (1-based)",
    ),
    Metrics.STANCE_SPECIFICITY: (
        _CELL,
        "1 - mean Jaccard overlap of the POV stage's chunks with the other POV sets' (same question, k, method)",
    ),
    Metrics.STAGE_BOILERPLATE_SHARE: (_CELL, "share of stage n's chunks that are mostly boilerplate"),
    Metrics.STAGE_TRUNCATED: (
        _CELL,
        "stage n's chunks longer than the embedder's window (cut when embedded)",
    ),
    Metrics.LATENCY_S: (
        _CELL,
        "seconds from the start of the cell's batch to the end of its answer (latency_per_cell 1), "
        "else the batch's wall time",
    ),
    Metrics.LATENCY_PER_CELL: (
        _CELL,
        "1 when latency_s is the cell's own time in its batch, 0 when it is the batch's wall time "
        "(the backend cannot time cells)",
    ),
    Metrics.BATCH_LATENCY_S: (_CELL, "wall time of the cell's whole batch (generate call)"),
    Metrics.PROMPT_TOKENS: (_CELL, "prompt length in tokens, as generated"),
    Metrics.COMPLEXITY_PROMPT_TOKENS: (_CELL, "prompt length in tokens, measured before generation"),
    Metrics.TOKENS_PER_S: (_CELL, "generated tokens per second"),
    Metrics.BATCH_SIZE: (_CELL, "cells in the batch the answer came from"),
    Metrics.PADDED_PROMPT_TOKENS: (_CELL, "that batch's prompt length in tokens (its rows padded to it)"),
    Metrics.BATCH_TOKENS: (_CELL, "that batch's prompt tokens: batch_size x padded_prompt_tokens"),
    Metrics.MEMORY_RETRIES: (_CELL, "batches the cell was in that ran out of memory (and were split)"),
    Metrics.SEED: (_CELL, "the seed the cell's batch ran with (a repeat's own, else generation.seed)"),
    Metrics.GPU_PEAK_ALLOCATED_MB: (
        _CELL,
        "peak GPU memory allocated, MiB (backend openai with a managed server: the server process's, from NVML)",
    ),
    Metrics.HOST_RSS_MB: (
        _CELL,
        "peak resident memory of the process that generated, MiB: the worker's, or a managed llama.cpp "
        "server's during the cell's batch",
    ),
    Metrics.RETRIES: (
        _CELL,
        "backend openai: requests sent again for the cell (HTTP 429/503, a reset connection)",
    ),
    Metrics.SERVER_PROMPT_MS: (_CELL, "backend openai: the server's own time reading the prompt (llama.cpp)"),
    Metrics.SERVER_GENERATE_MS: (_CELL, "backend openai: the server's own time generating (llama.cpp)"),
    Metrics.SERVER_TOKENS_PER_S: (_CELL, "backend openai: tokens per second as the server measured them"),
    Metrics.SERVER_CACHED_TOKENS: (_CELL, "backend openai: prompt tokens the server took from its cache"),
}
_ARTIFACT_DOCS: dict[str, tuple[str, str]] = {
    Artifacts.SPEC: (_EXEC, "the resolved spec, standalone (what `pov rerun` loads)"),
    Artifacts.MANIFEST: (_EXEC, "what outside the spec could change the results (runner.run.build_manifest)"),
    Artifacts.TEMPLATES: (_EXEC, "the templates, byte for byte"),
    Artifacts.PROMPT: (_CELL, "the rendered prompt"),
    Artifacts.CONTEXT: (_CELL, "the three ranked retrieval stages (ids, texts, scores)"),
    Artifacts.OUTPUT: (_CELL, "the answer (absent for a crash)"),
    Artifacts.STDERR: (_CELL, "a crash's message and the end of its stderr"),
    Artifacts.BATCH: (_CELL, "the batch the answer came from (with the other cells' ids) and every attempt"),
    Artifacts.REPORT: (_EXEC, "`pov report`'s folder (`report-vs-<run id>` with --compare)"),
    Artifacts.AUDIT: (_EXEC, "`pov audit`'s findings: audit/<time>.json, one per audit"),
}
_TRACE_DOCS: dict[str, tuple[str, str]] = {
    Traces.NAME: ("trace", "the trace's name and its root span (CHAIN): the question in, the answer out"),
    Traces.VECTOR: ("span", "RETRIEVER: stage 1, the k1 chunks nearest the question (cosine)"),
    Traces.QUERY: ("span", "RETRIEVER: stage 2, the k2 chunks most similar to the question"),
    Traces.POV: ("span", "RETRIEVER: stage 3, the k3 chunks of highest POV score"),
    Traces.GENERATE: ("span", "LLM: the prompt as a user message, the answer (or the crash) out"),
    Tags.CELL_ID: ("trace", "tag: the cell's id; the axes are tags too, named as the cell's params"),
    Traces.EXECUTION: ("trace", "tag: the execution's run id"),
    Traces.CELL_RUN: ("trace", "tag: the cell's child run id (MLflow's `mlflow.sourceRun` links it too)"),
    Tags.STATUS: ("trace", f"tag: `{Status.FINISHED}` or `{Status.CRASHED}` (a crash's trace is in ERROR)"),
    Tags.CAUSE: ("trace", "tag: a crash's cause"),
    Tags.SUPERSEDED: ("trace", f"tag: `{TRUE}` on the trace of a child run that was redone"),
    Traces.STAGE: ("span", "attribute of a RETRIEVER span: `vector`, `query` or `pov`"),
    Traces.K: ("span", "attribute of a RETRIEVER span: the chunks it keeps"),
    Traces.STATEMENTS: ("span", "attribute of the POV span: the POV statements"),
    Traces.MODEL: ("span", "attribute of the LLM span: the model as loaded"),
    Traces.ERROR: ("span", "attribute of a crash's LLM span: its message and stderr tail"),
    Traces.DOC_URI: ("document", "the chunk id; each document's `page_content` is the chunk's text"),
    Traces.CHUNK_ID: ("document", "the chunk id (also the document's `id`)"),
    Traces.SCORE: ("document", "the stage's score of the chunk"),
    Traces.RANK: ("document", "1-based rank in the stage"),
    Traces.PREVIOUS_RANK: ("document", "rank in the stage before (stages 2 and 3)"),
    Traces.SIMILARITIES: ("document", "POV span: the chunk's cosine to each POV statement"),
}
_SHOWN_AS = {
    Tags.VERSION_PREFIX: "version.<package>",
    Tags.CHECK_PREFIX: "check.<name>",
    Params.AXIS_PREFIX: "axis.<axis>",
    Metrics.CRASHED_PREFIX: "crashed.<cause>",
    Metrics.SESSION_PREFIX: "session.<name>",
    Artifacts.TEMPLATES: Artifacts.template("<name>"),
}
"""How a prefix (or folder) reads in the doc: with what follows it."""
DOCS = {
    "Tags": _TAG_DOCS,
    "Params": _PARAM_DOCS,
    "Metrics": _METRIC_DOCS,
    "Artifacts": _ARTIFACT_DOCS,
    "Traces": _TRACE_DOCS,
}
"""One line per name, by section: what docs/mlflow-schema.md says."""


def markdown() -> str:
    """docs/mlflow-schema.md: every name with the runs it is on and what it holds."""
    lines = [
        "# The MLflow schema",
        "",
        "Generated from `runner/tracking/schema.py` by `python -m runner.tracking.schema`; do not edit.",
        "",
        "One parent run per execution of `pov run` (or `pov rerun`), one child run per cell, and (unless the",
        "spec says `tracking.traces: false`) one MLflow trace per cell, linked to the cell's child run.",
        f"Schema version: {SCHEMA_VERSION} (the parent's tag `{Tags.SCHEMA_VERSION}`).",
    ]
    for section, docs in DOCS.items():
        lines += ["", f"## {section}", "", "| name | on | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{_SHOWN_AS.get(n, n)}` | {on} | {meaning} |" for n, (on, meaning) in docs.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
