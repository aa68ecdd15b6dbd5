"""The cohere provider, driven through the real `cohere` SDK against a local stand-in of `POST /v2/embed`."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cohere_standin import StandIn, fake_vector, serve

from runner.errors import UserError
from runner.retrieval.embedders.base import normalize_rows
from runner.retrieval.embedders.cohere import CohereEmbedder, CohereError
from runner.spec import Embedder

SPEC = Embedder(provider="cohere", model="embed-english-v3.0", batch_size=500)


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = f"co-test-{secrets.token_hex(16)}"
    monkeypatch.setenv("CO_API_KEY", key)
    return key


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, api_key: str) -> Iterator[StandIn]:
    with serve() as state:
        monkeypatch.setenv("CO_API_URL", state.url)
        yield state


def test_batches_of_at_most_96_with_the_right_input_type(standin: StandIn, api_key: str) -> None:
    emb = CohereEmbedder(SPEC)
    docs = [f"document number {i}" for i in range(250)]
    got = emb.embed(docs, "document")
    queries = ["what about the dollar?", "and BRICS?"]
    got_q = emb.embed(queries, "query")
    reqs = standin.embed_requests
    assert [len(r["texts"]) for r in reqs] == [96, 96, 58, 2]
    assert [r["input_type"] for r in reqs] == ["search_document"] * 3 + ["search_query"]
    assert all(r["embedding_types"] == ["float"] and r["model"] == "embed-english-v3.0" for r in reqs)
    assert all(r["_path"] == "/v2/embed" for r in reqs)
    assert all(h == f"Bearer {api_key}" for h in standin.auth_headers)
    np.testing.assert_allclose(
        got, normalize_rows(np.array([fake_vector(t, "search_document") for t in docs])), atol=1e-6
    )
    np.testing.assert_allclose(
        got_q, normalize_rows(np.array([fake_vector(t, "search_query") for t in queries])), atol=1e-6
    )
    assert emb.calls == 4 and emb.retries == 0


def test_429_and_5xx_are_retried_with_backoff(standin: StandIn) -> None:
    waits: list[float] = []
    emb = CohereEmbedder(SPEC, backoff_s=0.5, sleep=waits.append)
    standin.fail_with[:] = [429, 503, 500]
    got = emb.embed(["a", "b"], "query")
    assert got.shape == (2, 32)
    assert len(standin.requests) == 4 and len(standin.embed_requests) == 1
    assert emb.retries == 3 and emb.calls == 4
    assert waits == [0.01, 1.0, 2.0]  # Retry-After from the 429, then exponential backoff


def test_retries_give_up_with_a_clear_error(standin: StandIn, api_key: str) -> None:
    emb = CohereEmbedder(SPEC, max_retries=2, sleep=lambda s: None)
    standin.fail_with[:] = [500] * 5
    with pytest.raises(CohereError, match="failed after 2 retries: HTTP 500") as err:
        emb.embed(["a"], "document")
    assert api_key not in str(err.value)
    assert len(standin.requests) == 3


@pytest.mark.parametrize(
    ("status", "message"), [(401, "refused the API key in CO_API_KEY"), (400, "rejected the embed request")]
)
def test_client_errors_are_user_errors_without_retry(
    standin: StandIn, api_key: str, status: int, message: str
) -> None:
    emb = CohereEmbedder(SPEC, sleep=lambda s: pytest.fail("no retry expected"))
    standin.fail_with[:] = [status]
    with pytest.raises(UserError, match=message) as err:
        emb.embed(["a"], "document")
    assert api_key not in str(err.value) and len(standin.requests) == 1


def test_missing_key_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CO_API_KEY", raising=False)
    with pytest.raises(UserError, match="CO_API_KEY is not set"):
        CohereEmbedder(SPEC)


def test_missing_key_through_the_cli_exits_2(
    monkeypatch: pytest.MonkeyPatch, brics_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli import main

    monkeypatch.delenv("CO_API_KEY", raising=False)
    spec = brics_project / "experiments" / "seed_replica.yaml"
    assert main(["ingest", str(spec)]) == 0
    capsys.readouterr()
    assert main(["retrieve", str(spec), "--question", "g7-response", "--pov-set", "security"]) == 2
    err = capsys.readouterr().err
    assert "CO_API_KEY is not set" in err and "Traceback" not in err


def test_retrieval_with_a_cohere_reranker_end_to_end_never_leaks_the_key(
    standin: StandIn,
    api_key: str,
    brics_project: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """seed_replica: MiniLM in Chroma, Cohere for both reranks; through the CLI, a 429 on the first call."""
    from runner.cli import main

    caplog.set_level(logging.DEBUG)
    spec = brics_project / "experiments" / "seed_replica.yaml"
    assert main(["ingest", str(spec)]) == 0
    ingest_out, ingest_err = capsys.readouterr()
    standin.fail_with[:] = [429]
    assert (
        main(
            [
                "retrieve",
                str(spec),
                "--json",
                "--question",
                "japan-alliances",
                "--question",
                "g7-response",
                "--pov-set",
                "security",
                "--pov-set",
                "global_south",
                "--k",
                "15,10,5",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 4 and all(len(r["stages"][2]["ids"]) == 5 for r in results)
    assert "provider calls" in err

    reqs = standin.embed_requests
    assert len(standin.requests) == len(reqs) + 1  # the 429, retried
    assert all(len(r["texts"]) <= 96 for r in reqs)
    by_type: dict[str, set[str]] = {}
    for r in reqs:
        by_type.setdefault(r["input_type"], set()).update(r["texts"])
    stage1 = {t for r in results for t in r["stages"][0]["texts"]}
    assert by_type["search_document"] == stage1  # each stage-1 chunk embedded once, as a document
    assert sum(len(r["texts"]) for r in reqs if r["input_type"] == "search_document") == len(stage1)
    from runner.spec import load_spec

    exp = load_spec(spec)
    povs = set(exp.pov_sets["security"]) | set(exp.pov_sets["global_south"])
    questions = {exp.questions["japan-alliances"].text, exp.questions["g7-response"].text}
    assert by_type["search_query"] == povs | questions

    assert api_key not in out + err + ingest_out + ingest_err
    assert api_key not in caplog.text
    for path in brics_project.rglob("*"):
        if path.is_file():
            assert api_key.encode() not in path.read_bytes(), path


def test_cohere_at_a_closed_port_through_the_cli_exits_2(
    monkeypatch: pytest.MonkeyPatch, api_key: str, brics_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real SDK against an address nobody listens on: one clear message, no traceback, no minute of
    retries (the stored chunks are MiniLM's; the Cohere reranker is first needed by the retrieval)."""
    from conftest import free_port

    from runner.cli import main

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CO_API_URL", url)
    spec = brics_project / "experiments" / "seed_replica.yaml"
    assert main(["ingest", str(spec)]) == 0
    capsys.readouterr()
    assert main(["retrieve", str(spec), "--question", "g7-response", "--pov-set", "security"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Cohere API at {url}" in err and "CO_API_URL" in err
    assert "Traceback" not in err and api_key not in err


def test_an_unreachable_cohere_reranker_stops_pov_run_before_it_writes_anything(
    monkeypatch: pytest.MonkeyPatch, api_key: str, brics_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cohere only reranks here (the stored chunks are MiniLM's), so ingest never calls it; the run checks it
    by embedding the POV statements (which every run needs) before the execution is created."""
    from conftest import free_port

    from runner.cli import main

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CO_API_URL", url)
    store = brics_project / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    spec = brics_project / "experiments" / "seed_replica.yaml"
    assert main(["run", str(spec), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Cohere API at {url}" in err and "Traceback" not in err
    assert not (brics_project / ".pov" / "runs").exists(), "no run folder"
    from mlflow.tracking import MlflowClient

    if store.exists():  # the store may be made by the reachability check, but it holds no run
        client = MlflowClient(f"sqlite:///{store}")
        assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
