"""What OpenAI's two APIs ask, resolved once to one request: route, budget and conversation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.edge.api.resolve import MODEL_ROUTES, message_text, openai_request
from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.pipeline.request import QueryRequest
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.session import Message

ASK = [("user", "1+1")]


def resolve(config: EdgeConfig, **fields: object) -> QueryRequest:
    asked: dict[str, object] = {"model": "edgecloud", "route": None, "max_reasoning_tokens": None, "effort": None,
                                "turns": ASK, "where": "messages", **fields}  # fmt: skip
    return openai_request(config, **asked)  # type: ignore[arg-type]


@pytest.fixture
def config(tmp_path: Path) -> EdgeConfig:
    return EdgeConfig(bundle=tmp_path, reasoning_effort_tokens=(10, 20, 30))


@pytest.mark.parametrize(
    ("model", "route", "expected"),
    [
        ("edgecloud", None, Requested.AUTO),
        ("edgecloud-edge", None, Requested.EDGE),
        ("edgecloud-cloud", None, Requested.CLOUD),
        ("gpt-4o", None, Requested.AUTO),  # any other id is triaged
        ("edgecloud-cloud", "edge", Requested.EDGE),  # edgecloud's own field wins
    ],
)
def test_the_route_is_the_route_field_else_the_model_id(
    config: EdgeConfig, model: str, route: str | None, expected: Requested
) -> None:
    assert resolve(config, model=model, route=route).route is expected
    assert set(MODEL_ROUTES) == {"edgecloud", "edgecloud-edge", "edgecloud-cloud"}


@pytest.mark.parametrize(
    ("budget", "effort", "expected"),
    [(None, None, None), (None, "low", 10), (None, "medium", 20), (None, "high", 30), (5, "high", 5), (0, "low", 0)],
)
def test_the_budget_is_the_explicit_one_else_the_effort_s(
    config: EdgeConfig, budget: int | None, effort: str | None, expected: int | None
) -> None:
    assert resolve(config, max_reasoning_tokens=budget, effort=effort).max_reasoning_tokens == expected


def test_the_last_message_is_the_query_and_more_than_one_is_a_conversation(config: EdgeConfig) -> None:
    alone = resolve(config)
    assert (alone.query, alone.messages) == ("1+1", ())
    turns = [("system", "be brief"), ("user", "2+2"), ("assistant", "4"), ("user", "1+1")]
    chat = resolve(config, turns=turns, id="resp_1", max_output_tokens=9, include_reasoning=True)
    assert chat.query == "1+1" and chat.messages == tuple(Message(r, t) for r, t in turns)
    assert (chat.id, chat.max_output_tokens, chat.include_reasoning) == ("resp_1", 9, True)
    for turns in ([], [("system", "hi")], [("user", "1+1"), ("assistant", "2")]):
        with pytest.raises(InvalidInputError, match="the last of the messages must be a user message"):
            resolve(config, turns=turns)


def test_only_text_content_is_read() -> None:
    assert message_text(None, "m", ("text",)) == "" and message_text("hi", "m", ("text",)) == "hi"
    parts = [{"type": "input_text", "text": "a"}, {"type": "output_text", "text": "b"}]
    assert message_text(parts, "input[0]", ("input_text", "output_text")) == "ab"
    with pytest.raises(InvalidInputError, match=r"input\[0\]\.content\[1\] is of type 'image_url'"):
        message_text([{"type": "text", "text": "a"}, {"type": "image_url"}], "input[0]", ("text",))
