"""The Chroma store: where a collection lives, what made it, and reading it back.

Where: an embedded `PersistentClient` under `corpus.persist_dir` (default `<project>/.pov/chroma`, which
git ignores), or an `HttpClient` when `corpus.chroma_url` names a `chroma run` server. Collections use the
cosine space and hold our own vectors (no Chroma embedding function).

The collection's metadata records what made it: embedder provider, model and dimension (querying with
another embedder is a UserError), the chunking parameters, a fingerprint of the corpus files, and a state
(`writing` during an ingest's writes, `complete` after). The chunks' own metadata (`source` = file path)
says which file each came from. Ingest itself (what is written, and when) is runner.retrieval.indexing.

One collection, one corpus: the metadata also names the spec that last ingested and its corpus (path,
include patterns). Another spec whose corpus or chunking differs is refused before any write, since its
ingest would delete the first one's chunks; a collection without these names (older versions) is adopted.

A `chroma run` server that does not answer is one clear message: `ChromaDown`, a UserError, before a run,
and RunAborted mid-run (`Store.answering`). Chroma's HTTP client has no timeout of its own; the Store gives
it one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from runner.errors import RunAborted, UserError
from runner.redaction import redact
from runner.retrieval.chroma_state import CollectionState, read_state
from runner.retrieval.chunking import corpus_fingerprint
from runner.spec import Embedder as EmbedderSpec
from runner.spec import Experiment, chunking_identity, portable

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 120.0
"""A Chroma server's answer to one request: an ingest's largest upsert takes seconds, not minutes."""
SOURCES_PER_QUERY = 200
"""Files per `source $in [...]` query: well under SQLite's limit on bound variables."""
CORPUS_KEYS = ("pov.corpus", "pov.include", "pov.chunking")
"""What makes a collection's chunks: the same keys with other values are another corpus."""


class ChromaDown(UserError):
    """The Chroma server does not answer (`reason` says how); a RunAborted instead once a run is under way."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(redact(message))
        self.reason = redact(reason)


def _settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def chunking_key(exp: Experiment) -> str:
    """What decides how files are cut (runner.spec.chunking_identity): a collection made before
    `corpus.language` and `max_tokens` existed still matches the spec that made it."""
    return json.dumps(chunking_identity(exp.spec), sort_keys=True)


def maker(exp: Experiment) -> dict[str, str]:
    """The collection metadata naming the spec and corpus of an ingest (paths relative to the project, so
    that another checkout of it is the same corpus)."""
    corpus = exp.spec.corpus
    return {
        "pov.spec": exp.spec.name,
        "pov.spec_path": str(portable(str(exp.path), exp.root)),
        "pov.corpus": str(portable(str(corpus.path), exp.root)),
        "pov.include": json.dumps(list(corpus.include)),
        "pov.chunking": chunking_key(exp),
    }


def _reason(e: BaseException) -> str:
    return f"{e.__class__.__name__}: {e}"[:300]


class Store:
    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        corpus = exp.spec.corpus
        self.name = corpus.collection
        self.url = corpus.chroma_url
        self.path = Path(corpus.persist_dir) if corpus.persist_dir else exp.state_dir / "chroma"
        self._client: Any = None

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    @property
    def client(self) -> Any:
        if self._client is None:
            import chromadb

            if self.url:
                self._client = self._connect(self.url)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(self.path), settings=_settings())
        return self._client

    def _connect(self, url: str) -> Any:
        import chromadb
        import httpx

        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UserError(f"corpus.chroma_url {redact(url)!r}: expected http://host:port")
        try:
            # Chroma's client would wait for ever on a host that does not answer: ask once, briefly, first.
            httpx.get(f"{u.scheme}://{u.netloc}/api/v2/heartbeat", timeout=CONNECT_TIMEOUT_S)
            client = chromadb.HttpClient(
                host=u.hostname, port=u.port or 8000, ssl=u.scheme == "https", settings=_settings()
            )
            client.heartbeat()
        except Exception as e:
            raise ChromaDown(
                f"cannot reach the Chroma server at {url} ({_reason(e)}): start one with "
                "`chroma run --path DIR --port N`, or unset corpus.chroma_url to use the embedded store",
                _reason(e),
            ) from None
        # chromadb 1.x keeps its httpx session here, made with timeout=None; without it, calls are unbounded.
        session = getattr(getattr(client, "_server", None), "_session", None)
        if isinstance(session, httpx.Client):
            session.timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        return client

    def state(self) -> CollectionState | None:
        """The collection's metadata and a token that changes with every write to it, read without
        chromadb (runner.retrieval.chroma_state); None for a server store, or when it cannot be read so."""
        return None if self.url else read_state(self.path, self.name)

    @contextmanager
    def answering(self, *, mid_run: bool = False) -> Iterator[None]:
        """A Chroma server that stops answering inside this block is ChromaDown (a UserError: nothing has
        started), or with `mid_run` a RunAborted saying how to resume."""
        import httpx

        try:
            yield
        except (ChromaDown, httpx.TransportError) as e:
            if not self.url:
                raise
            reason = e.reason if isinstance(e, ChromaDown) else _reason(e)
            if mid_run:
                raise RunAborted(
                    redact(
                        f"Chroma at {self.url} stopped answering during retrieval ({reason}); start "
                        "`chroma run` again (or unset corpus.chroma_url) and run the same command to resume"
                    )
                ) from None
            if isinstance(e, ChromaDown):
                raise
            raise ChromaDown(
                f"Chroma at {self.url} is not answering: {reason}; start `chroma run` or unset "
                "corpus.chroma_url",
                reason,
            ) from None

    def check_maker(self, meta: dict[str, Any]) -> None:
        """UserError when another spec made the collection from another corpus or chunking: this ingest
        would delete its chunks. Another spec over the same corpus shares it; the spec that made it may
        change its own corpus; a collection that names no spec is adopted."""
        made_by, mine = meta.get("pov.spec"), maker(self.exp)
        if (
            made_by is None
            or made_by == mine["pov.spec"]
            or meta.get("pov.spec_path") == mine["pov.spec_path"]
        ):
            return
        differs = [k.removeprefix("pov.") for k in CORPUS_KEYS if meta.get(k) != mine[k]]
        if not differs:
            return
        theirs = ", ".join(f"{k.removeprefix('pov.')} {meta.get(k)}" for k in CORPUS_KEYS)
        raise UserError(
            redact(
                f"collection {self.name!r} at {self.location} was made by spec {made_by!r} "
                f"({meta.get('pov.spec_path')}: {theirs}); this spec {self.exp.spec.name!r} differs in "
                f"{' and '.join(differs)}, and its ingest would delete that spec's chunks: give this spec its "
                f"own corpus.collection, or delete the collection with `pov ingest {self.exp.path} --rebuild` "
                f"(then {made_by!r} needs its own collection too)"
            )
        )

    def collection(self) -> Any | None:
        """The collection, or None when there is none (an embedded store is not created to say so)."""
        from chromadb.errors import NotFoundError

        if not self.url and not self.path.exists():
            return None
        try:
            return self.client.get_collection(self.name, embedding_function=None)
        except (NotFoundError, ValueError):
            return None

    def metadata(self) -> dict[str, Any]:
        col = self.collection()
        return dict(col.metadata or {}) if col is not None else {}

    def _describe(self, meta: dict[str, Any]) -> str:
        return f"{meta.get('pov.provider')}/{meta.get('pov.model')} (dimension {meta.get('pov.dim')})"

    def check_embedder(self, meta: dict[str, Any], spec: EmbedderSpec, dim: int | None = None) -> None:
        """UserError unless the collection was built by this embedder (and dimension, when known)."""
        if "pov.model" not in meta:
            raise UserError(
                f"collection {self.name!r} at {self.location} was not made by `pov ingest` "
                "(no embedder recorded): choose another corpus.collection, or `pov ingest --rebuild`"
            )
        stored = (meta.get("pov.provider"), meta.get("pov.model"))
        if stored != (spec.provider, spec.model) or (dim is not None and meta.get("pov.dim") != dim):
            got = f"{spec.provider}/{spec.model}" + (f" (dimension {dim})" if dim is not None else "")
            raise UserError(
                f"collection {self.name!r} at {self.location} holds embeddings of "
                f"{self._describe(meta)}, but the spec's embedder is {got}: use another "
                "corpus.collection, or rebuild it with `pov ingest SPEC --rebuild`"
            )

    def open_for_query(self, spec: EmbedderSpec) -> tuple[Any, list[str]]:
        """The collection, checked against the embedder, and warnings about its freshness."""
        col = self.collection()
        if col is None or col.count() == 0:
            raise UserError(
                f"collection {self.name!r} at {self.location} is empty or missing: "
                f"run `pov ingest {self.exp.path}` first"
            )
        return col, self.query_warnings(dict(col.metadata or {}), spec)

    def query_warnings(self, meta: dict[str, Any], spec: EmbedderSpec) -> list[str]:
        """For a retrieval from the collection whose metadata is `meta`: UserError unless the embedder made
        it, and warnings about its freshness."""
        self.check_embedder(meta, spec)
        warnings = []
        if meta.get("pov.state") != "complete":
            warnings.append(
                f"the last ingest into {self.name!r} did not finish: run `pov ingest {self.exp.path}`"
            )
        else:
            corpus = self.exp.spec.corpus
            now = corpus_fingerprint(corpus.path, corpus.include, chunking_key(self.exp))
            if now != meta.get("pov.fingerprint"):
                warnings.append(
                    f"the corpus or its chunking changed since the last ingest into {self.name!r}; "
                    f"results come from the stored chunks: run `pov ingest {self.exp.path}`"
                )
        return warnings

    def stored(self, col: Any, sources: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """id -> chunk metadata of everything in the collection, or of the chunks of `sources` only."""
        out: dict[str, dict[str, Any]] = {}
        if sources is None:
            self._get_into(out, col, None)
        for i in range(0, len(sources or []), SOURCES_PER_QUERY):
            part = (sources or [])[i : i + SOURCES_PER_QUERY]
            self._get_into(out, col, {"source": {"$in": part}})
        return out

    def _get_into(self, out: dict[str, dict[str, Any]], col: Any, where: dict[str, Any] | None) -> None:
        page = self.client.get_max_batch_size()
        offset = 0
        while True:
            got = col.get(where=where, include=["metadatas"], limit=page, offset=offset)
            for cid, meta in zip(got["ids"], got["metadatas"] or [{}] * len(got["ids"]), strict=True):
                out[cid] = dict(meta or {})
            if len(got["ids"]) < page:
                return
            offset += page
