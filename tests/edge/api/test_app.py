"""The edge daemon over real HTTP (uvicorn on a loopback port), with the shipped
int8 student in onnxruntime and the real cloud Reasoner behind it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from edgecloud.edge.runtime import EdgeBundle
from edgecloud.edge.service import EdgeService
from edgecloud.shared.bundles.manifest import load_manifest
from tests.helpers.cloud import RunningServer, make_config
from tests.helpers.edge import API_KEY, TIMEOUT, RunningDaemon, edge_config, multi_step
from tests.helpers.waiting import free_port, wait_until

if TYPE_CHECKING:  # the cloud's model backend needs torch; edge-only installs run without it
    from edgecloud.cloud.transformers_engine import LoadedModel


@pytest.fixture
def daemon(shipped_base_models: Path, cloud: RunningServer, tmp_path: Path) -> Iterator[RunningDaemon]:
    running = RunningDaemon(edge_config(shipped_base_models, tmp_path, cloud=f"127.0.0.1:{cloud.port}"))
    yield running
    running.stop()


def test_edge_route_answers_locally(daemon: RunningDaemon) -> None:
    response = daemon.http.post("/v1/query", json={"query": "what is 23 + 70", "route": "edge"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["route_taken"] == "edge" and body["reason"] == "requested_edge" and not body["degraded"]
    assert body["answer"] and 0 <= body["confidence"] <= 1
    assert body["model_version"] == load_manifest(daemon.service.config.bundle).version
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["reasoning_tokens"] == 0
    assert body["latency_ms"] > 0 and body["id"]


def test_unsure_queries_escalate_and_get_the_cloud_answer(daemon: RunningDaemon, teacher_dir: Path) -> None:
    query, expected = multi_step(teacher_dir)
    wait_until(lambda: daemon.service.cloud_healthy)
    body = daemon.http.post("/v1/query", json={"query": query}).json()
    assert body["route_taken"] == "cloud" and body["reason"] in ("unsure", "too_difficult"), body
    assert body["answer"] == expected and body["usage"]["reasoning_tokens"] > 0 and not body["degraded"]
    local = daemon.http.post("/v1/query", json={"query": query, "route": "edge"}).json()
    assert body["edge_answer"] == local["answer"]  # what the edge would have said, for shadow evaluation
    assert "edge_answer" not in local
    metrics = daemon.http.get("/metrics").text
    assert 'edgecloud_edge_escalation_bytes_total{part="features"}' in metrics
    assert "edgecloud_edge_escalations_total 1.0" in metrics


def test_query_stream_is_server_sent_events(daemon: RunningDaemon, teacher_dir: Path) -> None:
    query, expected = multi_step(teacher_dir)
    wait_until(lambda: daemon.service.cloud_healthy)
    events = []
    with daemon.http.stream("POST", "/v1/query", json={"query": query, "route": "cloud", "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[0] == "route" and names[-1] == "done" and "reasoning" in names and "answer" in names
    assert "".join(d["text"] for n, d in events if n == "answer").strip() == expected == events[-1][1]["answer"]


def test_openai_client_non_streaming_and_streaming(daemon: RunningDaemon, teacher_dir: Path) -> None:
    query, expected = multi_step(teacher_dir)
    wait_until(lambda: daemon.service.cloud_healthy)
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    completion = client.chat.completions.create(
        model="edgecloud", messages=[{"role": "user", "content": query}], extra_body={"route": "cloud"}
    )
    assert completion.choices[0].message.content == expected
    assert completion.usage.completion_tokens_details.reasoning_tokens > 0
    assert not getattr(completion.choices[0].message, "reasoning_content", None)  # hidden unless asked
    chunks = list(
        client.chat.completions.create(
            model="edgecloud",
            messages=[{"role": "user", "content": query}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"route": "cloud", "include_reasoning": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert text.strip() == expected and reasoning.strip()
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens > 0
    local = client.chat.completions.create(
        model="edgecloud", messages=[{"role": "user", "content": "3+4"}], extra_body={"route": "edge"}
    )
    assert local.usage.completion_tokens_details.reasoning_tokens == 0


def test_openai_models_and_the_model_ids_and_efforts_that_choose_route_and_budget(
    daemon: RunningDaemon, teacher_dir: Path
) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    assert [m.id for m in client.models.list().data] == ["edgecloud", "edgecloud-edge", "edgecloud-cloud"]
    edge_only = client.models.retrieve("edgecloud-edge")
    served = load_manifest(daemon.service.config.bundle)
    assert edge_only.owned_by == "edgecloud" and edge_only.model_extra["edgecloud"] == {
        "route": "edge",
        "edge_model": {"name": served.name, "version": served.version},
    }
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"

    query, expected = multi_step(teacher_dir)
    wait_until(lambda: daemon.service.cloud_healthy)
    ask = [{"role": "user", "content": query}]
    edge = client.chat.completions.create(model="edgecloud-edge", messages=ask)
    assert edge.model_extra["edgecloud"]["route_taken"] == "edge"
    low = client.chat.completions.create(model="edgecloud-cloud", messages=ask, reasoning_effort="low")
    high = client.chat.completions.create(model="edgecloud-cloud", messages=ask, reasoning_effort="high")
    assert low.model_extra["edgecloud"]["route_taken"] == high.model_extra["edgecloud"]["route_taken"] == "cloud"
    low_tokens = low.usage.completion_tokens_details.reasoning_tokens
    high_tokens = high.usage.completion_tokens_details.reasoning_tokens
    assert low_tokens <= daemon.service.config.reasoning_effort_tokens[0] < high_tokens  # the budget cut it
    assert high.choices[0].message.content == expected
    # edgecloud's own route field still wins over the model id.
    forced = client.chat.completions.create(model="edgecloud-cloud", messages=ask, extra_body={"route": "edge"})
    assert forced.model_extra["edgecloud"]["route_taken"] == "edge"


def test_a_bad_openai_request_raises_bad_request_naming_the_parameter(daemon: RunningDaemon) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    ask = [{"role": "user", "content": "3+4"}]
    for kwargs, param in (
        ({"messages": []}, "messages"),
        ({"messages": ask, "reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"messages": ask, "n": 2}, "n"),  # one answer per request: refused, not silently one
        ({"messages": ask, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="edgecloud", **kwargs)  # type: ignore[call-overload]
        assert refused.value.status_code == 400 and refused.value.param == param, (param, refused.value.body)
        assert refused.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="must be a user message"):
        client.chat.completions.create(model="edgecloud", messages=[{"role": "system", "content": "be brief"}])
    # edgecloud's own API keeps its error shape.
    own = daemon.http.post("/v1/query", json={"query": ""})
    assert own.status_code in (400, 422) and set(own.json()["error"]) == {"type", "message"}


def test_openai_responses_plain_streaming_and_in_the_background(daemon: RunningDaemon, teacher_dir: Path) -> None:
    query, expected = multi_step(teacher_dir)
    wait_until(lambda: daemon.service.cloud_healthy)
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    plain = client.responses.create(model="edgecloud-cloud", input=query, reasoning={"effort": "high"})
    assert plain.status == "completed" and plain.output_text == expected and plain.id.startswith("resp_")
    assert plain.usage.output_tokens_details.reasoning_tokens > 0
    assert plain.usage.output_tokens > plain.usage.output_tokens_details.reasoning_tokens

    events = list(
        client.responses.create(model="edgecloud-cloud", input=[{"role": "user", "content": query}], stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == expected == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens_details.reasoning_tokens > 0

    queued = client.responses.create(model="edgecloud-cloud", input=query, background=True)
    assert queued.status == "queued" and queued.background
    deadline = time.monotonic() + TIMEOUT
    while (polled := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert polled.status == "completed" and polled.output_text == expected
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nothing")
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="edgecloud", input=[{"role": "system", "content": "hi"}])
    assert refused.value.status_code == 400 and "must be a user message" in str(refused.value)


def test_a_background_stream_cut_off_resumes_with_no_gap_and_no_duplicate(
    daemon: RunningDaemon, teacher_dir: Path
) -> None:
    query, expected = multi_step(teacher_dir)
    wait_until(lambda: daemon.service.cloud_healthy)
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    stream = client.responses.create(model="edgecloud-cloud", input=query, background=True, stream=True)
    seen = []
    for event in stream:  # the client reads three events and goes away
        seen.append(event)
        if len(seen) == 3:
            break
    stream.close()
    response_id = seen[0].response.id
    assert seen[0].type == "response.created" and seen[0].response.background
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=seen[-1].sequence_number))
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))  # no gap, no duplicate
    assert events[-1].type == "response.completed" and events[-1].response.output_text == expected
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected
    # Replayed whole from the start too, and polled as any background response.
    again = list(client.responses.retrieve(response_id, stream=True))
    assert [e.sequence_number for e in again] == list(range(len(events)))
    assert client.responses.retrieve(response_id).output_text == expected
    with pytest.raises(openai.NotFoundError):
        list(client.responses.retrieve("resp_nothing", stream=True))


def test_one_trace_covers_the_edge_and_the_cloud_spans_of_an_escalated_query(
    daemon: RunningDaemon, teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Edge and cloud share this process here, but the trace context crosses a real gRPC call
    # (traceparent in the metadata), as it does between two machines.
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from edgecloud.shared.base import tracing

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "_provider", None)  # restored (tracing off) after the test
    tracing.configure_tracing("edgecloud-test", exporter=exporter)
    query, expected = multi_step(teacher_dir)
    wait_until(lambda: daemon.service.cloud_healthy)
    body = daemon.http.post("/v1/query", json={"query": query, "route": "cloud"}).json()
    assert body["answer"] == expected
    wanted = {"edge.query", "edge.local_inference", "edge.escalation", "cloud.session", "cloud.queue_wait",
              "cloud.prefill", "cloud.thinking", "cloud.answer"}  # fmt: skip
    wait_until(lambda: wanted <= {s.name for s in exporter.get_finished_spans()})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert len({spans[name].context.trace_id for name in wanted}) == 1  # one trace, edge and cloud
    parent = {name: spans[name].parent.span_id if spans[name].parent else None for name in wanted}
    assert parent["edge.query"] is None
    assert parent["edge.local_inference"] == parent["edge.escalation"] == spans["edge.query"].context.span_id
    assert parent["cloud.session"] == spans["edge.escalation"].context.span_id  # across the gRPC call
    for name in ("cloud.queue_wait", "cloud.prefill", "cloud.thinking", "cloud.answer"):
        assert parent[name] == spans["cloud.session"].context.span_id
    assert spans["cloud.queue_wait"].end_time == spans["cloud.prefill"].start_time  # one after the other
    assert spans["cloud.prefill"].end_time <= spans["cloud.thinking"].start_time
    session = spans["cloud.session"]
    assert session.attributes["edgecloud.reasoning_tokens"] == body["usage"]["reasoning_tokens"] > 0
    assert spans["edge.query"].attributes["edgecloud.route"] == "cloud"
    assert session.start_time <= spans["cloud.thinking"].start_time <= spans["cloud.answer"].start_time
    assert spans["cloud.answer"].end_time <= session.end_time <= spans["edge.query"].end_time


def test_cloud_down_gives_degraded_answers_and_outbox(
    shipped_base_models: Path, tmp_path: Path, teacher_dir: Path, teacher: LoadedModel
) -> None:
    port = free_port()  # nothing listens here yet
    config = edge_config(shipped_base_models, tmp_path, cloud=f"127.0.0.1:{port}", cloud_timeout_s=5, cloud_wait_s=1)
    first = RunningDaemon(config)
    query, expected = multi_step(teacher_dir)
    try:
        simple = first.http.post("/v1/query", json={"query": "12 + 30"}).json()
        assert simple["route_taken"] == "edge" and simple["answer"] == "42"
        # The edge abstains on a multi-step query: no empty "degraded" answer, it waits in the outbox.
        abstained = first.http.post("/v1/query", json={"query": query})
        assert abstained.status_code == 202 and abstained.json()["route_taken"] == "cloud"
        accepted = first.http.post("/v1/query", json={"query": query, "route": "cloud"})
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["id"]
        pending = first.http.get(f"/v1/query/{request_id}").json()
        assert pending["status"] == "accepted" and pending["answer"] is None
        # The same through OpenAI's Responses API: queued in the outbox, not an error.
        client = openai.OpenAI(base_url=f"{first.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
        queued = client.responses.create(model="edgecloud-cloud", input=query)
        assert queued.status == "queued" and client.responses.retrieve(queued.id).status == "queued"
        dropped = client.responses.create(model="edgecloud-cloud", input=query, background=True)
        wait_until(lambda: client.responses.retrieve(dropped.id).status == "queued")  # in the outbox
        assert client.responses.cancel(dropped.id).status == "cancelled"
        # A chat completion cannot be fetched later: a clear 503 to retry, and nothing queued.
        with pytest.raises(openai.InternalServerError) as unavailable:
            client.chat.completions.create(model="edgecloud-cloud", messages=[{"role": "user", "content": query}])
        assert unavailable.value.status_code == 503 and unavailable.value.response.headers["retry-after"]
        assert "cloud is unreachable" in unavailable.value.message
        # The same for an auto query the edge abstains on, after waiting cloud_wait_s for the cloud.
        began = time.monotonic()
        with pytest.raises(openai.InternalServerError) as unavailable:
            client.chat.completions.create(model="edgecloud", messages=[{"role": "user", "content": query}])
        assert unavailable.value.status_code == 503 and time.monotonic() - began >= 1
        assert first.http.get("/readyz").json()["outbox_depth"] == 3
    finally:
        first.stop()  # the daemon restarts with the requests still in its outbox

    cloud = RunningServer(replace(make_config(teacher_dir, tmp_path), port=port), loaded=teacher)
    second = RunningDaemon(config)
    try:
        wait_until(lambda: second.http.get(f"/v1/query/{request_id}").json()["status"] == "completed", timeout=60)
        wait_until(lambda: second.http.get(f"/v1/query/{abstained.json()['id']}").json()["status"] == "completed")
        late = second.http.get(f"/v1/query/{abstained.json()['id']}").json()
        assert late["answer"] == expected
        delivered = second.http.get(f"/v1/query/{request_id}").json()
        assert delivered["answer"] == expected
        client = openai.OpenAI(base_url=f"{second.url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
        wait_until(lambda: client.responses.retrieve(queued.id).status == "completed", timeout=60)
        answered = client.responses.retrieve(queued.id)
        assert answered.output_text == expected and answered.usage.output_tokens_details.reasoning_tokens > 0
        assert client.responses.retrieve(dropped.id).status == "cancelled"  # not sent after the restart
        assert second.http.get("/readyz").json()["outbox_depth"] == 0
    finally:
        second.stop()
        cloud.stop()


def test_bad_input_gets_a_clear_4xx(daemon: RunningDaemon) -> None:
    cases = [
        ({"json": {"query": ""}}, 422),
        ({"json": {"query": "1+1", "route": "moon"}}, 422),
        ({"json": {"query": "1+1", "unexpected": 1}}, 422),
        ({"json": {"query": "1+1", "max_reasoning_tokens": -1}}, 422),
        ({"json": {"query": "1+" * 1500}}, 400),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
        ({"content": b'{"query": "\xff\xfe"}', "headers": {"content-type": "application/json"}}, 400),
        ({"content": b"x" * 70_000, "headers": {"content-type": "application/json"}}, 413),
    ]
    for kwargs, status in cases:
        response = daemon.http.post("/v1/query", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert response.json()["error"]["message"]
    assert daemon.http.get("/v1/query/unknown-id").status_code == 404


def test_api_key_when_configured(shipped_base_models: Path, tmp_path: Path) -> None:
    running = RunningDaemon(edge_config(shipped_base_models, tmp_path, api_keys=(API_KEY,)))
    try:
        assert running.http.post("/v1/query", json={"query": "1+1"}).status_code == 401
        assert running.http.post("/v1/query", json={"query": "1+1"}, headers={"x-api-key": "wrong"}).status_code == 401
        key = {"authorization": f"Bearer {API_KEY}"}
        ok = running.http.post("/v1/query", json={"query": "12 + 30"}, headers=key)
        assert ok.status_code == 200 and ok.json()["answer"] == "42"
        # A multi-step query the edge abstains on needs a cloud, and this daemon has none: a clear 503.
        hard = running.http.post("/v1/query", json={"query": "(37*11+58)*9-76"}, headers=key)
        assert hard.status_code == 503 and "no cloud configured" in hard.json()["error"]["message"]
        assert running.http.get("/healthz").status_code == 200  # probes need no key
    finally:
        running.stop()


def test_health_ready_and_metrics(daemon: RunningDaemon) -> None:
    assert daemon.http.get("/healthz").json() == {"status": "ok"}
    wait_until(lambda: daemon.http.get("/readyz").json()["cloud"] == "up")
    daemon.http.post("/v1/query", json={"query": "2+2", "route": "edge"})
    text = daemon.http.get("/metrics").text
    assert 'edgecloud_edge_requests_total{reason="requested_edge",route="edge"} 1.0' in text
    assert 'edgecloud_edge_request_seconds_count{route="edge"} 1.0' in text
    assert 'edgecloud_edge_model_version{name="edgecloud-demo-student"}' in text
    assert "edgecloud_edge_cloud_up 1.0" in text


def test_swapping_the_model_under_load_fails_no_request(shipped_base_models: Path, tmp_path: Path) -> None:
    running = RunningDaemon(edge_config(shipped_base_models, tmp_path))
    service: EdgeService = running.service
    bundles = [service.slot.current, EdgeBundle.load(shipped_base_models / "edge-student")]
    stop = threading.Event()
    statuses: list[int] = []

    def hammer() -> None:
        with httpx.Client(base_url=running.url, timeout=TIMEOUT) as http:
            while not stop.is_set():
                statuses.append(http.post("/v1/query", json={"query": "12+7", "route": "edge"}).status_code)

    try:
        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(hammer)
            for i in range(10):
                time.sleep(0.05)
                new = bundles[(i + 1) % 2]
                old = service.swap(new)
                assert old is not new and service.slot.current is new
                assert service.slot.wait_idle(old, timeout=10)  # in-flight requests on the old model drain
            stop.set()
        assert statuses and set(statuses) == {200}
    finally:
        stop.set()
        running.stop()
