"""Backend `openai` against a local stub server (tests/openai_stub.py): concurrency and order, the request it
sends, and every failure a server can serve up: each one is its own cell's crash with the right cause, the
worth-retrying ones are retried (and counted), and the cells beside them finish."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai_stub import Stub

from runner.generation import Job, JobResult, LoadFailed
from runner.generation.backends import RemoteBackend, is_remote, remote_worker
from runner.spec import Generation, Limits, Model

KEY = "stub-key-0123456789abcdef"


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub(delay_s=0.3, key=KEY)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_API_KEY", KEY)


def worker(
    stub: Stub, tmp_path: Path, *, concurrency: int = 4, timeout_s: float = 5.0, **extra: object
) -> RemoteBackend:
    model = Model(
        backend="openai",
        name="stub-model",
        base_url=stub.url,
        api_key_env="STUB_API_KEY",
        max_concurrency=concurrency,
        **extra,  # type: ignore[arg-type]
    )
    w = remote_worker(model, Limits(cell_timeout_s=timeout_s), tmp_path / "server0-stub.log")
    w.start()
    return w


def jobs(*prompts: str) -> list[Job]:
    return [Job(f"c{i}", p) for i, p in enumerate(prompts)]


PARAMS = Generation(max_new_tokens=8, temperature=0.0, seed=7)


def by_id(results: list[JobResult]) -> dict[str, JobResult]:
    return {r.cell_id: r for r in results}


def test_openai_is_a_remote_backend() -> None:
    assert is_remote("openai") and not is_remote("transformers")


def test_cells_go_concurrently_and_come_back_in_order(stub: Stub, tmp_path: Path) -> None:
    w = worker(stub, tmp_path, concurrency=4)
    try:
        batch = jobs(*(f"question number {i} about word{i}" for i in range(8)))
        started = time.monotonic()
        results = w.run_batch(batch, PARAMS, 60)
        wall = time.monotonic() - started
    finally:
        w.stop()
    assert [r.cell_id for r in results] == [j.cell_id for j in batch]
    assert [r.output for r in results] == [f"echo: word{i}" for i in range(8)]
    assert stub.max_in_flight == 4  # max_concurrency, never more
    assert wall < 8 * 0.3  # not one after the other
    for r in results:
        assert r.status == "finished"
        assert r.metrics["prompt_tokens"] == 5 and r.metrics["new_tokens"] == 3  # from `usage`
        assert 0.3 <= r.metrics["latency_s"] <= r.metrics["batch_latency_s"]  # its own request's time
        assert r.metrics["latency_per_cell"] == 1.0 and r.metrics["batch_size"] == 8
        assert r.metrics["retries"] == 0
    # The key went as the Authorization header, and only there.
    assert {r["auth"] for r in stub.requests} == {f"Bearer {KEY}"}
    assert not any(KEY in str(r["body"]) for r in stub.requests)


def test_the_request_maps_the_generation_parameters(stub: Stub, tmp_path: Path) -> None:
    w = worker(stub, tmp_path)
    sampled = Generation(max_new_tokens=12, temperature=0.7, top_p=0.9, seed=3, repetition_penalty=1.1)
    try:
        w.run_batch(jobs("hello there"), sampled, 60)
    finally:
        w.stop()
    [req] = stub.requests
    assert req["path"] == "/v1/chat/completions"
    body = req["body"]
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == (
        "stub-model",
        12,
        0.7,
        3,
    )
    assert body["top_p"] == 0.9 and body["repetition_penalty"] == body["repeat_penalty"] == 1.1
    assert body["stream"] is False


def test_chat_template_false_sends_a_raw_completion(stub: Stub, tmp_path: Path) -> None:
    w = worker(stub, tmp_path, chat_template=False)
    try:
        [r] = w.run_batch(jobs("Q: raw prompt"), PARAMS, 60)
    finally:
        w.stop()
    assert r.output == "echo: prompt"
    assert (
        stub.requests[0]["path"] == "/v1/completions"
        and stub.requests[0]["body"]["prompt"] == "Q: raw prompt"
    )
    assert "top_p" not in stub.requests[0]["body"]  # greedy: no sampling parameters


def test_each_failure_is_its_own_cells_crash(stub: Stub, tmp_path: Path) -> None:
    w = worker(stub, tmp_path, concurrency=8, timeout_s=10.0, request_timeout_s=2.0)
    batch = jobs(
        "[429] retried once",
        "[503x9] never ready",
        "[500] broken",
        "[oom] out of memory",
        "[bad] not json",
        "[nochoice] empty",
        "[stall] no answer",
        "[reset] dropped once",
        "a fine question",
    )
    try:
        started = time.monotonic()
        results = by_id(w.run_batch(batch, PARAMS, 60))
        wall = time.monotonic() - started
    finally:
        w.stop()
    status = {cid: (r.status, r.cause) for cid, r in results.items()}
    assert status == {
        "c0": ("finished", None),
        "c1": ("crashed", "exception"),
        "c2": ("crashed", "exception"),
        "c3": ("crashed", "cuda_oom"),
        "c4": ("crashed", "exception"),
        "c5": ("crashed", "exception"),
        "c6": ("crashed", "timeout"),
        "c7": ("finished", None),
        "c8": ("finished", None),
    }
    assert results["c0"].metrics["retries"] == 1 and results["c7"].metrics["retries"] == 1
    assert results["c1"].metrics["retries"] == 3  # bounded
    assert "HTTP 503" in str(results["c1"].error) and "after 3 retries" in str(results["c1"].error)
    assert "HTTP 500" in str(results["c2"].error) and "the sampler broke" in str(results["c2"].error)
    assert "malformed response" in str(results["c4"].error) and "<html>gateway</html>" in str(
        results["c4"].error
    )
    assert "choices[0].message.content" in str(results["c5"].error)
    assert "within 2 s" in str(results["c6"].error)
    assert wall < 6  # the stalled request was abandoned at its deadline, not waited out
    assert stub.seen["[503x9]"] == 4 and stub.seen["[500]"] == 1  # only 429, 503 and resets are retried
    log = (tmp_path / "server0-stub.log").read_text()
    assert log.count("retry") == 5 and "after HTTP 429" in log  # every retry written down


def test_an_external_server_that_stops_fails_the_rest_fast(stub: Stub, tmp_path: Path) -> None:
    w = worker(stub, tmp_path, concurrency=2, timeout_s=30.0)
    try:
        first = w.run_batch(jobs("one", "two"), PARAMS, 60)
        stub.close()
        started = time.monotonic()
        second = w.run_batch([Job("c3", "three"), Job("c4", "four"), Job("c5", "five")], PARAMS, 60)
        third = w.run_batch([Job("c6", "six")], PARAMS, 60)
        wall = time.monotonic() - started
    finally:
        w.stop()
    assert [r.status for r in first] == ["finished", "finished"]
    assert [(r.status, r.cause) for r in second + third] == [("crashed", "server_died")] * 4
    assert all("stopped answering" in str(r.error) for r in second + third)
    assert wall < 3  # each failed at once, not at its 30 s timeout


def test_an_external_server_that_is_down_at_the_start_fails_its_load(tmp_path: Path) -> None:
    stub = Stub()
    stub.close()
    with pytest.raises(LoadFailed) as failed:
        worker(stub, tmp_path)
    assert failed.value.cause == "server_died" and "does not answer" in failed.value.error


def _served_spec(tmp: Path, model_yaml: str) -> Path:
    from conftest import REPO

    (tmp / "ask.j2").write_text("{{ question }}\n")
    spec = tmp / "spec.yaml"
    spec.write_text(f"""\
name: served
corpus: {{path: {REPO / "data" / "brics"}, collection: served}}
questions: [{{id: q1, text: 'What is trade?'}}]
pov_sets: {{p: ['Trade matters.']}}
personas: {{a: 'You are brief.'}}
templates: {{ask: {tmp / "ask.j2"}}}
models:
  m: {model_yaml}
""")
    return spec


def test_the_manifest_records_what_the_server_serves_and_rerun_names_its_drift(
    stub: Stub, tmp_path: Path
) -> None:
    from runner.run import compare
    from runner.run.manifest import build_manifest
    from runner.spec import load_spec

    spec = _served_spec(
        tmp_path, f'{{backend: openai, name: stub-model, base_url: "{stub.url}", api_key_env: STUB_API_KEY}}'
    )
    before = build_manifest(load_spec(spec))
    served = before["models"]["m"]
    assert served["server"]["models"] == [{"id": "stub-model"}]  # /models, its timestamp left out
    assert served["resolved_revision"].startswith("server:") and KEY not in str(before)
    assert compare(before, build_manifest(load_spec(spec))) == []  # the same server: no drift
    stub.model_id = "another-model"
    drifts = [d.field for d in compare(before, build_manifest(load_spec(spec)))]
    assert "models.m.server.models" in drifts and "models.m.resolved_revision" in drifts


def test_a_server_that_does_not_answer_stops_the_run_before_anything_is_written(tmp_path: Path) -> None:
    from runner.errors import UserError
    from runner.run.manifest import build_manifest
    from runner.spec import load_spec

    gone = Stub()
    gone.close()
    spec = _served_spec(tmp_path, f'{{backend: openai, name: x, base_url: "{gone.url}"}}')
    with pytest.raises(
        UserError, match=r"models\.m: the server at .* cannot serve the run \(connection refused"
    ):
        build_manifest(load_spec(spec))


def test_a_managed_servers_manifest_hashes_its_gguf(tmp_path: Path, smollm2: Path) -> None:
    import hashlib
    import shutil

    from runner.generation import FETCHED
    from runner.run import compare
    from runner.run.manifest import build_manifest
    from runner.spec import load_spec

    spec = _served_spec(
        tmp_path,
        '{backend: openai, name: smol, server: {gguf: "builtin:smollm2-135m-instruct", parallel: 2}}',
    )
    before = build_manifest(load_spec(spec))
    facts = before["models"]["m"]["server"]
    assert facts["gguf_sha256"] == FETCHED["smollm2-135m-instruct"].sha256  # the pinned hash, found again
    assert facts["version"].startswith("xllamacpp ") and facts["settings"]["parallel"] == 2
    # sha256 of the GGUF's tokenizer.chat_template as the `gguf` package's GGUFReader reads it (computed once)
    assert facts["chat_template_sha256"] == "872be49dbb638044"
    # Another GGUF (here the same bytes plus one) is a drift of the model's files.
    copy = tmp_path / "other.gguf"
    shutil.copyfile(_builtin_gguf_path(), copy)
    with copy.open("ab") as fh:
        fh.write(b"\0")
    other = build_manifest(load_spec(spec, [f"models.m.server.gguf={copy}"]))
    assert other["models"]["m"]["server"]["gguf_sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert "models.m.server.gguf_sha256" in [d.field for d in compare(before, other)]


def _builtin_gguf_path() -> Path:
    from conftest import REPO

    from runner.generation import builtin_gguf

    path = builtin_gguf("smollm2-135m-instruct", REPO / ".pov")
    assert path is not None
    return path
