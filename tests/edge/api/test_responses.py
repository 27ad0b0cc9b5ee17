"""OpenAI's Responses API on the edge daemon, with the official ``openai`` client over real HTTP:
stored responses that outlive a daemon restart, belong to the API key that made them, and honour
``max_output_tokens`` (``max_completion_tokens`` on chat completions)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from edgecloud.edge.api.response_store import ResponseStore
from tests.helpers.cloud import RunningServer
from tests.helpers.edge import TIMEOUT, RunningDaemon, edge_config, multi_step
from tests.helpers.waiting import wait_until

KEY_A = "tenant-a-key-0123456789"
KEY_B = "tenant-b-key-0123456789"


def client_of(daemon: RunningDaemon, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


def poll(client: openai.OpenAI, response_id: str, timeout: float = TIMEOUT):  # type: ignore[no-untyped-def]
    wait_until(lambda: client.responses.retrieve(response_id).status not in ("queued", "in_progress"), timeout)
    return client.responses.retrieve(response_id)


@pytest.fixture
def held_cloud(cloud: RunningServer) -> Iterator[threading.Event]:
    """Set it to let the cloud go on: until then its event loop is held, so a query it was sent
    stays in progress for as long as a test needs."""
    gate = threading.Event()
    yield gate
    gate.set()


def test_background_responses_running_at_a_stop_complete_after_the_restart(
    shipped_models: Path, cloud: RunningServer, held_cloud: threading.Event, tmp_path: Path, teacher_dir: Path
) -> None:
    query, expected = multi_step(teacher_dir)
    config = edge_config(shipped_models, tmp_path, cloud=f"127.0.0.1:{cloud.port}")
    first = RunningDaemon(config)
    try:
        wait_until(lambda: first.service.cloud_healthy)
        client = client_of(first)
        cloud.loop.call_soon_threadsafe(held_cloud.wait, TIMEOUT)  # the cloud takes the query, answers nothing
        plain = client.responses.create(model="edgecloud-cloud", input=query, background=True)
        stream = client.responses.create(model="edgecloud-cloud", input=query, background=True, stream=True)
        seen = [event for _, event in zip(range(3), stream, strict=False)]  # the client reads three, then goes
        stream.close()
        assert [e.sequence_number for e in seen] == [0, 1, 2]
        streamed = seen[0].response.id
        assert client.responses.retrieve(plain.id).status == "in_progress"
    finally:
        first.stop()  # the daemon stops with both still running
    store = ResponseStore(config.outbox)
    assert {r.id for r in store.unfinished()} == {plain.id, streamed}  # left to run again, not cancelled
    store.close()

    held_cloud.set()
    second = RunningDaemon(config)
    try:
        client = client_of(second)
        answered = poll(client, plain.id)
        assert answered.status == "completed" and answered.output_text == expected and answered.background
        assert answered.usage.output_tokens_details.reasoning_tokens > 0
        rest = list(client.responses.retrieve(streamed, stream=True, starting_after=seen[-1].sequence_number))
        events = seen + rest
        assert [e.sequence_number for e in events] == list(range(len(events)))  # no gap, no duplicate
        assert events[-1].type == "response.completed" and events[-1].response.output_text == expected
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected
        # Once it ended, the stream is replayed from the store: the same events.
        wait_until(lambda: client.responses.retrieve(streamed).status == "completed")
        replayed = list(client.responses.retrieve(streamed, stream=True))
        assert [(e.type, e.sequence_number) for e in replayed] == [(e.type, e.sequence_number) for e in events]
        assert replayed[-1].response.output_text == expected
    finally:
        second.stop()


def test_a_response_belongs_to_the_api_key_that_created_it(shipped_models: Path, tmp_path: Path) -> None:
    daemon = RunningDaemon(edge_config(shipped_models, tmp_path, api_keys=(KEY_A, KEY_B)))
    try:
        alice, bob = client_of(daemon, KEY_A), client_of(daemon, KEY_B)
        background = alice.responses.create(model="edgecloud-edge", input="CALCULATE 23 + 70", background=True)
        stored = alice.responses.create(model="edgecloud-edge", input="CALCULATE 23 + 70")
        unstored = alice.responses.create(model="edgecloud-edge", input="CALCULATE 23 + 70", store=False)
        assert poll(alice, background.id).status == "completed"
        assert alice.responses.retrieve(stored.id).output_text == stored.output_text != ""
        for response_id in (background.id, stored.id):
            with pytest.raises(openai.NotFoundError):
                bob.responses.retrieve(response_id)
            with pytest.raises(openai.NotFoundError):
                bob.responses.cancel(response_id)
        with pytest.raises(openai.NotFoundError):
            alice.responses.retrieve(unstored.id)
        with pytest.raises(openai.AuthenticationError) as unauthenticated:
            client_of(daemon, "not-a-key-0123456789").responses.retrieve(background.id)
        assert unauthenticated.value.body["type"] == "authentication_error"  # OpenAI's shape, from the guard
        assert set(unauthenticated.value.body) == {"message", "type", "param", "code"}
        assert alice.responses.retrieve(background.id).status == "completed"  # bob changed nothing
    finally:
        daemon.stop()


def test_max_output_tokens_bounds_reasoning_and_answer_together(
    shipped_models: Path, cloud: RunningServer, tmp_path: Path, teacher_dir: Path
) -> None:
    query, expected = multi_step(teacher_dir)
    daemon = RunningDaemon(edge_config(shipped_models, tmp_path, cloud=f"127.0.0.1:{cloud.port}"))
    try:
        wait_until(lambda: daemon.service.cloud_healthy)
        client = client_of(daemon)
        cut = client.responses.create(model="edgecloud-cloud", input=query, max_output_tokens=4)
        assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
        assert cut.usage.output_tokens <= 4 and cut.output_text != expected
        roomy = client.responses.create(model="edgecloud-cloud", input=query, max_output_tokens=2048)
        assert roomy.status == "completed" and roomy.output_text == expected and roomy.incomplete_details is None
        events = list(client.responses.create(model="edgecloud-cloud", input=query, max_output_tokens=4, stream=True))
        assert events[-1].type == "response.incomplete" and events[-1].response.usage.output_tokens <= 4
        local = client.responses.create(model="edgecloud-edge", input="CALCULATE 23 + 70", max_output_tokens=1)
        assert local.status == "incomplete" and local.output_text == ""  # withheld, not cut mid-answer

        messages = [{"role": "user", "content": query}]
        chat = client.chat.completions.create(model="edgecloud-cloud", messages=messages, max_completion_tokens=4)
        assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens <= 4
        chunks = list(
            client.chat.completions.create(model="edgecloud-cloud", messages=messages, max_tokens=4, stream=True)
        )
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        whole = client.chat.completions.create(model="edgecloud-cloud", messages=messages, max_completion_tokens=2048)
        assert whole.choices[0].finish_reason == "stop" and whole.choices[0].message.content == expected
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="edgecloud", input=query, max_output_tokens=0)
        assert refused.value.body["param"] == "max_output_tokens"
    finally:
        daemon.stop()
