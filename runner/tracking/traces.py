"""Each cell as an MLflow trace, so that MLflow's own trace view shows its RAG flow: a root span (CHAIN) for
the cell, a RETRIEVER span per retrieval stage (vector search, query rerank, POV rerank) whose outputs are
the ranked chunks as `mlflow.entities.Document`s, and an LLM span with the prompt as a user message and the
answer as the assistant's (or, for a crash, an ERROR status with the cause and stderr tail). The trace is
tagged with the cell id, its axis values and its status, and linked to the cell's child run (MLflow's
`mlflow.sourceRun`). Names: runner.tracking.schema.Traces.

The tracker writes the traces itself, synchronously, to its own tracking URI: the spans are built with
MLflow's span classes over a private OpenTelemetry tracer (not MLflow's process-wide one, which exports to
the global tracking URI, one store call per span, from a background queue that drops what a kill catches in
it), then each trace's info goes in with one `start_trace` and a whole batch's spans with one `log_spans`.
Retrieval runs once for all cells before generation, so a cell has no retrieval time of its own: its
RETRIEVER spans are instants at the start of the cell; the LLM span runs from the start of the cell's batch
to the end of its answer, as `latency_s` does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.redaction import redact
from runner.spec import AXES
from runner.tracking.client import is_server, unreachable
from runner.tracking.records import MAX_ERROR, axis_value, cut
from runner.tracking.schema import TRUE, Status, Tags, Traces

if TYPE_CHECKING:
    from mlflow.entities import Span, TraceInfo
    from mlflow.tracking import MlflowClient

    from runner.run import CellResult

MAX_TRACE_TAG = 4096  # mlflow.tracing.constant.MAX_CHARS_IN_TRACE_INFO_TAGS_VALUE
MAX_PREVIEW = 1000  # TRACE_REQUEST_RESPONSE_PREVIEW_MAX_LENGTH_OSS
MAX_STDERR = 4000
"""The LLM span of a crash keeps this much of the end of the worker's stderr (stderr.txt holds it all)."""


@dataclass
class CellTrace:
    """What a cell's trace is built from, beyond its result."""

    result: CellResult
    question: str
    """The question's text."""
    model: str
    """The model as loaded (name or folder)."""
    cell_run: str
    execution: str


def _ns(t: float, default: int) -> int:
    return int(t * 1e9) if t else default


def _documents(stage: dict[str, Any], before: list[str] | None) -> list[dict[str, Any]]:
    from mlflow.entities import Document

    ranks = {cid: r for r, cid in enumerate(before or [], 1)}
    sims = stage.get("similarities") or []
    out = []
    for r, (cid, text, score) in enumerate(
        zip(stage["ids"], stage["texts"], stage["scores"], strict=True), 1
    ):
        meta: dict[str, Any] = {
            Traces.DOC_URI: cid,
            Traces.CHUNK_ID: cid,
            Traces.SCORE: score,
            Traces.RANK: r,
        }
        if cid in ranks:
            meta[Traces.PREVIOUS_RANK] = ranks[cid]
        if r <= len(sims):
            meta[Traces.SIMILARITIES] = sims[r - 1]
        out.append(Document(page_content=text, metadata=meta, id=cid).to_dict())
    return out


def build(
    cell: CellTrace, experiment_id: str, tracer: Any, secrets: dict[str, str]
) -> tuple[TraceInfo, list[Span]]:
    """The trace of one cell: its info (tags, the link to the child run) and its five finished spans."""
    import time

    from mlflow.entities import SpanStatus, SpanStatusCode, SpanType, TraceInfo, TraceLocation, TraceState
    from mlflow.entities.span import LiveSpan
    from mlflow.tracing.constant import (
        TRACE_SCHEMA_VERSION,
        TRACE_SCHEMA_VERSION_KEY,
        SpanAttributeKey,
        TokenUsageKey,
        TraceMetadataKey,
        TraceTagKey,
    )
    from mlflow.tracing.utils import generate_trace_id_v3
    from opentelemetry import trace as otel

    r = cell.result
    crashed = r.status == Status.CRASHED
    start = _ns(r.started_at, time.time_ns())
    end = max(start, _ns(r.ended_at, start))

    def clean(value: Any) -> Any:
        return redact(value, secrets) if isinstance(value, str) else value

    root_otel = tracer.start_span(Traces.NAME, start_time=start)
    trace_id = generate_trace_id_v3(root_otel)
    root = LiveSpan(root_otel, trace_id, SpanType.CHAIN)
    inputs = {"question": clean(cell.question), "question_id": r.cell.question}
    inputs |= {axis: axis_value(r.cell, axis) for axis in ("template", "persona", "pov_set", "k")}
    root.set_inputs(inputs)
    parent = otel.set_span_in_context(root_otel)
    children: list[LiveSpan] = []

    stages = r.context.get("stages", []) if isinstance(r.context, dict) else []
    before: list[str] | None = None
    for stage in stages:
        name = Traces.STAGE_SPANS.get(str(stage.get("name")))
        if name is None:
            continue
        span = LiveSpan(
            tracer.start_span(name, context=parent, start_time=start), trace_id, SpanType.RETRIEVER
        )
        span.set_attributes({Traces.STAGE: stage["name"], Traces.K: len(stage["ids"])})
        statements = [clean(s) for s in stage.get("statements", [])]
        if statements:
            span.set_attribute(Traces.STATEMENTS, statements)
        span.set_inputs({"query": clean(cell.question)} if name != Traces.POV else {"statements": statements})
        docs = _documents({**stage, "texts": [clean(t) for t in stage["texts"]]}, before)
        span.set_outputs(docs)
        span.end(end_time_ns=start)
        children.append(span)
        before = list(stage["ids"])

    llm = LiveSpan(
        tracer.start_span(Traces.GENERATE, context=parent, start_time=start), trace_id, SpanType.LLM
    )
    llm.set_inputs({"messages": [{"role": "user", "content": clean(r.prompt)}]})
    llm.set_attribute(Traces.MODEL, clean(cell.model))
    prompt_tokens, new_tokens = r.metrics.get("prompt_tokens"), r.metrics.get("new_tokens")
    if prompt_tokens is not None and new_tokens is not None:
        llm.set_attribute(
            SpanAttributeKey.CHAT_USAGE,
            {
                TokenUsageKey.INPUT_TOKENS: int(prompt_tokens),
                TokenUsageKey.OUTPUT_TOKENS: int(new_tokens),
                TokenUsageKey.TOTAL_TOKENS: int(prompt_tokens + new_tokens),
            },
        )
    if crashed:
        error = "\n".join(x for x in (r.error, (r.stderr_tail or "")[-MAX_STDERR:]) if x) or (r.cause or "")
        llm.set_attribute(Traces.ERROR, clean(error))
        llm.end(
            status=SpanStatus(SpanStatusCode.ERROR, clean(cut(r.error or r.cause or "", MAX_ERROR))),
            end_time_ns=end,
        )
        root.end(status=SpanStatus(SpanStatusCode.ERROR, r.cause or ""), end_time_ns=end)
    else:
        answer = clean(r.output or "")
        llm.set_outputs({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})
        llm.end(end_time_ns=end)
        root.set_outputs({"answer": answer})
        root.end(end_time_ns=end)
    children.append(llm)

    tags = {
        TraceTagKey.TRACE_NAME: Traces.NAME,
        Tags.CELL_ID: r.cell.id,
        Traces.EXECUTION: cell.execution,
        Traces.CELL_RUN: cell.cell_run,
        Tags.STATUS: r.status,
        **{axis: axis_value(r.cell, axis) for axis in AXES},
    }
    if crashed:
        tags[Tags.CAUSE] = r.cause or ""
    info = TraceInfo(
        trace_id=trace_id,
        trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=start // 1_000_000,
        execution_duration=(end - start) // 1_000_000,
        state=TraceState.ERROR if crashed else TraceState.OK,
        request_preview=cut(clean(cell.question), MAX_PREVIEW),
        response_preview=cut(clean(r.output or r.cause or ""), MAX_PREVIEW),
        trace_metadata={
            TRACE_SCHEMA_VERSION_KEY: str(TRACE_SCHEMA_VERSION),
            TraceMetadataKey.SOURCE_RUN: cell.cell_run,
        },
        tags={k: cut(clean(str(v)), MAX_TRACE_TAG) for k, v in tags.items()},
    )
    return info, [s.to_immutable_span() for s in (root, *children)]


class TraceWriter:
    """Writes cells' traces to one tracking store (see the module docstring). A store that cannot hold spans
    (a tracking server older than MLflow 3.4) turns traces off for the rest of the run, with one warning."""

    def __init__(self, tracking_uri: str, questions: dict[str, str], models: dict[str, str]) -> None:
        self.tracking_uri = tracking_uri
        self.questions = questions
        """Question id -> its text."""
        self.models = models
        """Model key -> the model as loaded."""
        self.off: str | None = None
        """Why traces stopped being written, once they did."""
        self._client: Any = None
        self._tracer: Any = None

    def record(
        self,
        experiment_id: str,
        execution: str,
        opened: list[tuple[CellResult, str]],
        secrets: dict[str, str],
    ) -> None:
        """The traces of a batch of cells, each with its child run's id. A trace that cannot be written costs
        a warning, never the run (its child run holds everything); a tracking server that stopped answering
        fails it as any write would (the tracker turns that into RunAborted)."""
        cells = [
            CellTrace(
                r,
                self.questions.get(r.cell.question, r.cell.question),
                self.models.get(r.cell.model, r.cell.model),
                run_id,
                execution,
            )
            for r, run_id in opened
        ]
        try:
            self.write(experiment_id, cells, secrets)
        except Exception as e:
            if is_server(self.tracking_uri) and unreachable(self.tracking_uri) is not None:
                raise
            print(
                f"pov: warning: traces of {len(cells)} cell(s) not recorded: {redact(str(e))[:300]}",
                file=sys.stderr,
            )

    def write(self, experiment_id: str, cells: list[CellTrace], secrets: dict[str, str]) -> None:
        """One start_trace per cell, then every span of the batch in one log_spans."""
        if self.off or not cells:
            return
        if self._client is None:
            from mlflow.tracing.client import TracingClient
            from opentelemetry.sdk.trace import TracerProvider

            self._client = TracingClient(self.tracking_uri)
            self._tracer = TracerProvider().get_tracer("pov-runner")
        built = [build(c, experiment_id, self._tracer, secrets) for c in cells]
        for info, _ in built:
            self._client.start_trace(info)
        try:
            self._client.log_spans(experiment_id, [s for _, spans in built for s in spans])
        except NotImplementedError as e:
            self.off = str(e)
            print(f"pov: warning: not recording MLflow traces: {redact(str(e))[:300]}", file=sys.stderr)
            self._client.delete_traces(experiment_id, trace_ids=[info.trace_id for info, _ in built])

    def supersede(self, client: MlflowClient, experiment_id: str, run_ids: list[str]) -> None:
        """Tag the traces of child runs that were redone `pov.superseded=true`, as the runs themselves are,
        so that one live trace per cell remains among those not tagged."""
        for run_id in run_ids:
            for trace in client.search_traces(locations=[experiment_id], run_id=run_id, include_spans=False):
                client.set_trace_tag(trace.info.trace_id, Tags.SUPERSEDED, TRUE)
