"""pov-runner: declarative experiments for point-of-view reranked RAG with local LLMs.

The pipeline, one subpackage per stage (imports run one way, down this list):

    runner.report      crash rate against prompt complexity, latency, output checks
    runner.tracking    executions and cells in MLflow; `pov rerun`
    runner.run         the engine: cells retrieved, rendered, generated, recorded once each
    runner.retrieval   Chroma vector search -> query rerank -> POV rerank
    runner.generation  local models in isolated workers (processes, Ray actors, `pov serve`)
    runner.spec        YAML spec -> Experiment -> cells

The names below are the library's public face:

    exp = runner.load_spec("experiments/quickstart.yaml")
    summary = runner.run_experiment(exp, runner.expand(exp), runner.make_tracker(exp, no_track=False))

They are resolved on first use, so `import runner` (and `pov --help`) imports no torch, chromadb, mlflow or
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.errors import SpecError, UserError
    from runner.generation import make_executor
    from runner.retrieval import ChromaRetriever, Retriever, ingest, open_retriever
    from runner.run import NullTracker, RunSummary, Tracker, build_manifest, compare, run_experiment
    from runner.spec import Cell, Experiment, expand, load_spec
    from runner.tracking import MlflowTracker, make_tracker, rerun

_EXPORTS = {
    "load_spec": "runner.spec",
    "expand": "runner.spec",
    "Experiment": "runner.spec",
    "Cell": "runner.spec",
    "SpecError": "runner.errors",
    "UserError": "runner.errors",
    "ingest": "runner.retrieval",
    "open_retriever": "runner.retrieval",
    "ChromaRetriever": "runner.retrieval",
    "Retriever": "runner.retrieval",
    "make_executor": "runner.generation",
    "run_experiment": "runner.run",
    "RunSummary": "runner.run",
    "Tracker": "runner.run",
    "NullTracker": "runner.run",
    "build_manifest": "runner.run",
    "compare": "runner.run",
    "MlflowTracker": "runner.tracking",
    "make_tracker": "runner.tracking",
    "rerun": "runner.tracking",
}

__all__ = [
    "Cell",
    "ChromaRetriever",
    "Experiment",
    "MlflowTracker",
    "NullTracker",
    "Retriever",
    "RunSummary",
    "SpecError",
    "Tracker",
    "UserError",
    "__version__",
    "build_manifest",
    "compare",
    "expand",
    "ingest",
    "load_spec",
    "make_executor",
    "make_tracker",
    "open_retriever",
    "rerun",
    "run_experiment",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pov-runner")  # pyproject.toml is the one source of the version
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
