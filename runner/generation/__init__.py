"""The generation stage: local models answer batches of prompts in isolated workers, and every job comes
back as a result or as a crash with its cause.

    executor = make_executor(exp.spec, state_dir=exp.state_dir)
    executor.prestart(models, log_dir)
    executor.run(groups, exp.spec.generation, on_result)

Workers are child processes (or Ray actors, or the warm workers of a `pov serve`); the parent alone writes
results. torch and transformers are imported only inside workers.
"""

from runner.generation.backends import Backend, GenerationOut, RemoteBackend, backend_class, is_remote
from runner.generation.backends.openai_manifest import server_manifest, server_revision
from runner.generation.backends.openai_requests import SERVER_DIED
from runner.generation.builtins import (
    BUILTIN_PREFIX,
    BUILTINS,
    FETCHED,
    MODEL_CACHE_ENV,
    builtin_gguf,
    ensure_fetched,
    ensure_gguf,
    model_cache,
    resolve_model,
)
from runner.generation.executors import EXECUTORS, Executor, make_executor
from runner.generation.frontier import Edge, frontier
from runner.generation.jobs import CAUSES as WORKER_CAUSES
from runner.generation.jobs import MEMORY_CAUSES, Groups, Job, JobResult, LoadFailed, WorkerCrash
from runner.generation.model_files import cache_folder_hashes, folder_hash, model_revision
from runner.generation.server import Server
from runner.generation.server_info import absolute_model, find_server, pid_alive, request
from runner.generation.stepdown import FITTED, Attempt
from runner.generation.tinymodel import TinyDims, build_tiny

CAUSES = (*WORKER_CAUSES, SERVER_DIED)
"""Why a cell crashed: the workers' causes (runner.generation.jobs.CAUSES) and `server_died`, an inference
server that stopped answering (backend openai)."""

__all__ = [
    "BUILTINS",
    "BUILTIN_PREFIX",
    "CAUSES",
    "EXECUTORS",
    "FETCHED",
    "FITTED",
    "MEMORY_CAUSES",
    "MODEL_CACHE_ENV",
    "SERVER_DIED",
    "Attempt",
    "Backend",
    "Edge",
    "Executor",
    "GenerationOut",
    "Groups",
    "Job",
    "JobResult",
    "LoadFailed",
    "RemoteBackend",
    "Server",
    "TinyDims",
    "WorkerCrash",
    "absolute_model",
    "backend_class",
    "build_tiny",
    "builtin_gguf",
    "cache_folder_hashes",
    "ensure_fetched",
    "ensure_gguf",
    "find_server",
    "folder_hash",
    "frontier",
    "is_remote",
    "make_executor",
    "model_cache",
    "model_revision",
    "pid_alive",
    "request",
    "resolve_model",
    "server_manifest",
    "server_revision",
]
