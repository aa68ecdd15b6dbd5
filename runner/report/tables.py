"""Read executions back from MLflow and aggregate their cells into the report's tables.

Each cell is counted once: child runs tagged `pov.superseded=true` and child runs whose MLflow status is
KILLED were redone and are ignored, as are unfinished child runs (no `pov.status`), and if one cell id still
appears twice the latest run wins. What was ignored is counted and shown, so a hand count can be matched.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.report.stats import bin_edges, bin_index, bin_labels, percentile, wilson

AXES = ("template", "model", "persona", "k", "pov_set", "question")
"""Axes the report breaks crash rate down by (as the child runs' params name them)."""
TOKENS = "prompt_tokens"
"""The pseudo-axis of prompt-length bins."""
DEFAULT_URI = "sqlite:///mlflow.db"
Bins = tuple[list[float], list[str]]


@dataclass
class CellRow:
    run_id: str
    cell_id: str
    axes: dict[str, str]
    status: str
    cause: str | None
    metrics: dict[str, float]
    checks: dict[str, str]
    end_time: int

    @property
    def crashed(self) -> bool:
        return self.status == "crashed"

    @property
    def prompt_tokens(self) -> float | None:
        """The rendered prompt's length: measured before generation, so crashed cells have it too."""
        for key in ("complexity_prompt_tokens", "prompt_tokens"):
            if key in self.metrics and not math.isnan(self.metrics[key]):
                return self.metrics[key]
        return None


@dataclass
class Execution:
    run_id: str
    run_name: str
    experiment_id: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    status: str
    start_time: int
    cells: list[CellRow] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    """Child runs left out: `superseded`, `killed`, `unfinished`, `duplicate`."""

    @property
    def label(self) -> str:
        return f"{self.run_name} ({self.run_id[:8]})"


def tracking_uri(spec_uri: str | None = None) -> str:
    """MLFLOW_TRACKING_URI wins, then the spec's `tracking.uri`, then sqlite:///mlflow.db in the cwd."""
    return os.environ.get("MLFLOW_TRACKING_URI") or spec_uri or DEFAULT_URI


def client_for(uri: str) -> Any:
    """An MlflowClient, refusing a sqlite file that does not exist (MLflow would create an empty one)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UserError(
                f"no MLflow store at {path} (tracking URI {uri}); run `pov run` first, or point "
                "MLFLOW_TRACKING_URI (or the spec's tracking.uri) at the store that holds the runs"
            )
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _search_all(
    client: Any,
    experiment_ids: list[str],
    filter_string: str,
    order_by: list[str] | None = None,
    limit: int | None = None,
) -> list[Any]:
    from mlflow.entities import ViewType

    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=min(limit or 1000, 1000),
            order_by=order_by,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token or (limit and len(runs) >= limit):
            return runs[:limit] if limit else runs


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def latest_execution(client: Any, spec_name: str, spec_hash: str | None) -> tuple[str, bool]:
    """Run id of the newest execution of a spec: same name and hash if there is one, else same name.
    Returns (run id, whether the hash matched)."""
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    base = f"tags.`pov.kind` = 'execution' AND tags.`pov.spec_name` = {_quote(spec_name)}"
    order = ["attributes.start_time DESC"]
    if spec_hash:
        runs = _search_all(
            client, exp_ids, f"{base} AND tags.`pov.spec_hash` = {_quote(spec_hash)}", order, 1
        )
        if runs:
            return runs[0].info.run_id, True
    runs = _search_all(client, exp_ids, base, order, 1)
    if not runs:
        raise UserError(
            f"no execution of spec {spec_name!r} in the MLflow store; run `pov run` first "
            "(or pass --run RUN_ID)"
        )
    return runs[0].info.run_id, False


def load_execution(client: Any, run_id: str) -> Execution:
    """The parent run and its counted cells."""
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no MLflow run with id {run_id!r} in this tracking store") from None
    tags = dict(parent.data.tags)
    if tags.get("pov.kind") != "execution":
        hint = (
            f" (it is a cell of execution {tags['mlflow.parentRunId']})"
            if "mlflow.parentRunId" in tags
            else ""
        )
        raise UserError(f"run {run_id} is not a pov execution (tag pov.kind={tags.get('pov.kind')!r}){hint}")
    ex = Execution(
        run_id,
        parent.info.run_name or run_id,
        parent.info.experiment_id,
        tags,
        dict(parent.data.params),
        dict(parent.data.metrics),
        parent.info.status,
        parent.info.start_time or 0,
    )
    children = _search_all(client, [ex.experiment_id], f"tags.mlflow.parentRunId = {_quote(run_id)}")
    ex.cells, ex.ignored = count_cells(children)
    return ex


def count_cells(children: Iterable[Any]) -> tuple[list[CellRow], dict[str, int]]:
    """Child runs -> one row per cell, and how many runs were left out and why."""
    ignored: Counter[str] = Counter()
    by_cell: dict[str, CellRow] = {}
    for run in children:
        tags = run.data.tags
        if tags.get("pov.kind", "cell") != "cell":
            continue
        if tags.get("pov.superseded") == "true":
            ignored["superseded"] += 1
            continue
        if run.info.status == "KILLED":
            ignored["killed"] += 1
            continue
        if tags.get("pov.status") not in ("finished", "crashed"):
            ignored["unfinished"] += 1
            continue
        params = run.data.params
        cell_id = tags.get("pov.cell_id") or params.get("cell_id") or run.info.run_name or run.info.run_id
        row = CellRow(
            run.info.run_id,
            cell_id,
            {a: params.get(a, "?") for a in AXES},
            tags["pov.status"],
            tags.get("pov.cause") if tags["pov.status"] == "crashed" else None,
            dict(run.data.metrics),
            {k.removeprefix("check."): v for k, v in tags.items() if k.startswith("check.")},
            run.info.end_time or run.info.start_time or 0,
        )
        if cell_id in by_cell:
            ignored["duplicate"] += 1
            if row.end_time < by_cell[cell_id].end_time:
                continue
        by_cell[cell_id] = row
    return list(by_cell.values()), dict(ignored)


# ---- aggregation: plain dicts and lists, so the tables are written as report.json and tested against ----


def rate_row(value: str, rows: list[CellRow], hit: Callable[[CellRow], bool]) -> dict[str, Any]:
    n, k = len(rows), sum(1 for r in rows if hit(r))
    p, lo, hi = wilson(k, n)
    return {"value": value, "n": n, "k": k, "rate": p, "lo": lo, "hi": hi}


def _k_order(value: str) -> tuple[Any, ...]:
    try:
        return (0, *(-int(x) for x in value.split("-")))
    except ValueError:
        return (1, value)


def crash_rates(cells: list[CellRow], axis: str, bins: Bins | None = None) -> list[dict[str, Any]]:
    """Crash rate per value of an axis (or per prompt-token bin), with Wilson 95% intervals."""
    groups: dict[str, list[CellRow]] = defaultdict(list)
    if axis == TOKENS:
        edges, labels = bins or ([], [])
        known = [(c, t) for c in cells if (t := c.prompt_tokens) is not None]
        for c, t in known:
            groups[labels[bin_index(t, edges)]].append(c)
        order = [label for label in labels if label in groups]
        if len(known) < len(cells):
            groups["unknown"] = [c for c in cells if c.prompt_tokens is None]
            order.append("unknown")
    else:
        for c in cells:
            groups[c.axes[axis]].append(c)
        order = sorted(groups, key=_k_order) if axis == "k" else sorted(groups)
    return [rate_row(v, groups[v], lambda r: r.crashed) for v in order]


def crash_causes(cells: list[CellRow]) -> dict[str, dict[str, int]]:
    """Crashes per cause, overall (`all`) and per template."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for c in cells:
        if c.crashed:
            cause = c.cause or "unknown"
            out["all"][cause] += 1
            out[c.axes["template"]][cause] += 1
    return {
        k: dict(sorted(v.items())) for k, v in sorted(out.items(), key=lambda kv: (kv[0] != "all", kv[0]))
    }


def performance(cells: list[CellRow], axis: str) -> list[dict[str, Any]]:
    """Latency p50/p95 and peak GPU memory of finished cells, per value of an axis."""
    groups: dict[str, list[CellRow]] = defaultdict(list)
    for c in cells:
        if not c.crashed:
            groups[c.axes[axis]].append(c)
    rows = []
    for value in sorted(groups):
        lat = [c.metrics["latency_s"] for c in groups[value] if "latency_s" in c.metrics]
        mem = [
            c.metrics["gpu_peak_allocated_mb"] for c in groups[value] if "gpu_peak_allocated_mb" in c.metrics
        ]
        tps = [c.metrics["tokens_per_s"] for c in groups[value] if "tokens_per_s" in c.metrics]
        rows.append(
            {
                "value": value,
                "n": len(groups[value]),
                "latency_p50": percentile(lat, 50),
                "latency_p95": percentile(lat, 95),
                "tokens_per_s_p50": percentile(tps, 50),
                "gpu_peak_mb_max": max(mem) if mem else math.nan,
                "gpu_peak_mb_p50": percentile(mem, 50),
            }
        )
    return rows


def check_rates(cells: list[CellRow], by: str | None = None) -> list[dict[str, Any]]:
    """Pass rate of every `check.<name>` tag over the finished cells that carry it."""
    names = sorted({name for c in cells for name in c.checks})
    rows = []
    for name in names:
        have = [c for c in cells if name in c.checks]

        def passed(r: CellRow, name: str = name) -> bool:
            return r.checks[name] == "pass"

        if by is None:
            rows.append({"check": name, **rate_row("all", have, passed)})
            continue
        for value in sorted({c.axes[by] for c in have}):
            rows.append({"check": name, **rate_row(value, [c for c in have if c.axes[by] == value], passed)})
    return rows


def points(cells: list[CellRow]) -> list[dict[str, Any]]:
    """Per-cell values for the scatter plots against prompt length."""
    return [
        {
            "prompt_tokens": c.prompt_tokens,
            "latency_s": c.metrics.get("latency_s"),
            "gpu_peak_mb": c.metrics.get("gpu_peak_allocated_mb"),
            "crashed": c.crashed,
            "template": c.axes["template"],
            "model": c.axes["model"],
        }
        for c in cells
    ]


def summarize(ex: Execution, bins: Bins) -> dict[str, Any]:
    """Every table of one execution."""
    cells = ex.cells
    return {
        "run_id": ex.run_id,
        "run_name": ex.run_name,
        "label": ex.label,
        "spec_name": ex.tags.get("pov.spec_name", ex.params.get("spec_name", "")),
        "spec_hash": ex.tags.get("pov.spec_hash", ex.params.get("spec_hash", "")),
        "state": ex.tags.get("pov.state", ex.status.lower()),
        "git": {k: ex.tags.get(f"git.{k}", "") for k in ("commit", "branch", "dirty")},
        "gpu": ex.tags.get("gpu.name", ""),
        "ignored": ex.ignored,
        "overall": rate_row("all", cells, lambda r: r.crashed),
        "crash_rate": {axis: crash_rates(cells, axis, bins) for axis in (*AXES, TOKENS)},
        "crash_causes": crash_causes(cells),
        "performance": {axis: performance(cells, axis) for axis in ("template", "model")},
        "checks": check_rates(cells),
        "checks_by_template": check_rates(cells, "template"),
        "points": points(cells),
    }


def build(executions: list[Execution]) -> dict[str, Any]:
    """The report's data: one summary per execution, prompt-token bins shared so they line up."""
    tokens = [t for ex in executions for c in ex.cells if (t := c.prompt_tokens) is not None]
    # One set of bins for every execution, so that --compare lines them up.
    bins = (edges := bin_edges(tokens)), bin_labels(edges, tokens)
    return {"executions": [summarize(ex, bins) for ex in executions], "token_bins": edges}
