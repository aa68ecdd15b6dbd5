"""pov-runner: declarative experiments for point-of-view reranked RAG with local LLMs.

Importing this package is cheap on purpose: torch, chromadb, mlflow and transformers are imported only
by the modules that need them, so `pov --help`, `pov validate` and `pov plan` start fast.
"""

__version__ = "0.1.0"
