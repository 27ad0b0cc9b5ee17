"""Conversations reach the cloud model whole, over real HTTP, gRPC and the shipped models: system
messages, earlier turns and Responses' ``instructions`` are counted in ``prompt_tokens``, rendered
by the teacher's chat template and kept in the escalation log; a conversation the edge student
cannot read skips it; one over a limit is a 400, never cut. Sampling parameters reach the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import openai
import pytest

from edgecloud.shared.escalations.records import read_escalations
from tests.helpers.cloud import RunningServer, make_config
from tests.helpers.edge import RunningDaemon, edge_config

if TYPE_CHECKING:
    from edgecloud.cloud.transformers_engine import LoadedModel

QUERY = "(12 + 30) * 2"
HISTORY = [
    {"role": "system", "content": "You are a careful calculator. Answer with the number only."},
    {"role": "user", "content": "5 + 5"},
    {"role": "assistant", "content": "<think>\n5 + 5 = 10\n</think>\n\n10"},
    {"role": "user", "content": "7 * 3"},
    {"role": "assistant", "content": "21"},
]


@pytest.fixture
def stack(
    shipped_models: Path, teacher_dir: Path, teacher: LoadedModel, tmp_path: Path
) -> Iterator[tuple[Path, openai.OpenAI]]:
    from edgecloud.cloud.sessions import SessionConfig

    log = tmp_path / "escalations.jsonl"
    cloud = RunningServer(
        make_config(teacher_dir, tmp_path, sessions=SessionConfig(escalation_log=log)), loaded=teacher
    )
    daemon = RunningDaemon(edge_config(shipped_models, tmp_path, cloud=f"127.0.0.1:{cloud.port}"))
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        yield log, client
    finally:
        daemon.stop()
        cloud.stop()


def test_a_chat_with_a_system_message_and_earlier_turns_reaches_the_cloud_whole(
    stack: tuple[Path, openai.OpenAI],
) -> None:
    log, client = stack
    alone = client.chat.completions.create(model="edgecloud-cloud", messages=[{"role": "user", "content": QUERY}])
    whole = client.chat.completions.create(model="edgecloud", messages=[*HISTORY, {"role": "user", "content": QUERY}])  # type: ignore[list-item]
    # The demo teacher was trained on single questions, so it need not answer this one right: what
    # matters here is that it read the whole conversation.
    assert alone.choices[0].message.content == "84"
    # The edge student reads single queries: the conversation went to the cloud, unread by the edge.
    assert whole.model_extra["edgecloud"]["route_taken"] == "cloud"
    assert whole.model_extra["edgecloud"]["reason"] == "conversation"
    # Every message is in the prompt (the old think block is stripped by the template, not counted).
    assert whole.usage.prompt_tokens > alone.usage.prompt_tokens + 20
    records = {r.request_id: r for r in read_escalations(log)}
    conversation = [r for r in records.values() if r.messages]
    assert len(conversation) == 1
    assert conversation[0].messages == [*HISTORY, {"role": "user", "content": QUERY}]
    assert conversation[0].query == QUERY and conversation[0].answer == whole.choices[0].message.content


def test_responses_instructions_and_input_turns_reach_the_cloud(
    stack: tuple[Path, openai.OpenAI],
) -> None:
    log, client = stack
    plain = client.responses.create(model="edgecloud-cloud", input=QUERY)
    instructed = client.responses.create(model="edgecloud", instructions="Answer with the number only.", input=QUERY)
    assert instructed.output_text == plain.output_text == "84"
    assert instructed.usage.input_tokens > plain.usage.input_tokens
    (record,) = [r for r in read_escalations(log) if r.messages]
    assert record.messages == [
        {"role": "system", "content": "Answer with the number only."},
        {"role": "user", "content": QUERY},
    ]


def test_a_conversation_is_refused_where_it_cannot_be_answered_whole(
    stack: tuple[Path, openai.OpenAI],
) -> None:
    log, client = stack
    conversation = [*HISTORY, {"role": "user", "content": QUERY}]
    with pytest.raises(openai.BadRequestError, match="reads single queries"):
        client.chat.completions.create(model="edgecloud-edge", messages=conversation)  # type: ignore[arg-type]
    # Over the edge's character limit: a 400 before anything runs.
    huge = [{"role": "user", "content": "x" * 1500}, {"role": "assistant", "content": "ok"}] * 12
    with pytest.raises(openai.BadRequestError, match="nothing is cut"):
        client.chat.completions.create(model="edgecloud", messages=[*huge, {"role": "user", "content": QUERY}])
    # Under the edge's limit, over the cloud model's input tokens (1024): the cloud refuses it, a 400.
    long = [{"role": "user", "content": "1 + 1 " * 300}, {"role": "assistant", "content": "2"}] * 3
    with pytest.raises(openai.BadRequestError, match="tokens after the chat template"):
        client.chat.completions.create(model="edgecloud", messages=[*long, {"role": "user", "content": QUERY}])
    # A part that is not text is refused, not dropped.
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    with pytest.raises(openai.BadRequestError, match="only text content"):
        client.chat.completions.create(model="edgecloud", messages=image)  # type: ignore[arg-type]
    assert not [r for r in read_escalations(log) if r.messages] if log.exists() else True


def test_sampling_parameters_reach_the_cloud_and_a_seed_repeats_the_answer(
    stack: tuple[Path, openai.OpenAI],
) -> None:
    _, client = stack
    asked = {"model": "edgecloud-cloud", "messages": [{"role": "user", "content": QUERY}]}
    first = client.chat.completions.create(**asked, temperature=0.8, top_p=0.9, seed=11)  # type: ignore[call-overload]
    again = client.chat.completions.create(**asked, temperature=0.8, top_p=0.9, seed=11)  # type: ignore[call-overload]
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.usage.completion_tokens == again.usage.completion_tokens
    greedy = client.chat.completions.create(**asked, temperature=0)  # type: ignore[call-overload]
    assert greedy.choices[0].message.content == "84"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**asked, temperature=3.0)  # type: ignore[call-overload]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**asked, top_p=0)  # type: ignore[call-overload]
