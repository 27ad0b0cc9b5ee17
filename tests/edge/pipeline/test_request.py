"""The one domain check of a request (limits of the daemon and of the serving model) and the cloud's
budgets under ``max_output_tokens``."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.pipeline.request import MAX_OUTPUT_TOKENS, QueryRequest, check
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.session import Message
from edgecloud.shared.reasoner.thinking import THINK_TAG_TOKENS

CHAT = (Message("system", "be brief"), Message("user", "1+1"))


@pytest.fixture
def config(tmp_path: Path) -> EdgeConfig:
    return EdgeConfig(bundle=tmp_path, max_query_chars=10, max_conversation_chars=20, max_reasoning_tokens=100,
                       reasoning_effort_tokens=(10, 20, 30))  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "reads", "message"),
    [
        ({"query": " \t"}, True, "query is empty"),
        ({"query": "1+" * 6}, True, "12 characters; the limit is 10"),
        ({"query": "1+1", "messages": (Message("user", "x" * 18), Message("user", "1+1"))}, True, "nothing is cut"),
        ({"query": "1+1", "messages": (Message("user", "2+2"),)}, True, "must end with the user message"),
        ({"query": "1+1", "messages": CHAT, "route": Requested.EDGE}, False, "reads single queries"),
        ({"query": "1+1", "max_reasoning_tokens": 101}, True, r"max_reasoning_tokens must be in \[0, 100\]"),
        ({"query": "1+1", "max_reasoning_tokens": -1}, True, "max_reasoning_tokens"),
        ({"query": "1+1", "max_output_tokens": 0}, True, "max_output_tokens"),
        ({"query": "1+1", "max_output_tokens": MAX_OUTPUT_TOKENS + 1}, True, "max_output_tokens"),
    ],
)
def test_a_request_over_a_limit_is_refused_naming_it(
    config: EdgeConfig, fields: dict[str, object], reads: bool, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check(QueryRequest(**fields), config, reads_conversations=reads)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"query": "1+1"},
        {"query": "1+1", "messages": CHAT},  # auto: a conversation the edge does not read goes to the cloud
        {"query": "1+1", "messages": CHAT, "route": Requested.CLOUD},
        {"query": "1+1", "max_reasoning_tokens": 0, "max_output_tokens": 1},
        {"query": "1+1", "max_reasoning_tokens": 100, "max_output_tokens": MAX_OUTPUT_TOKENS},
    ],
)
def test_a_request_within_the_limits_passes(config: EdgeConfig, fields: dict[str, object]) -> None:
    check(QueryRequest(**fields), config, reads_conversations=False)  # type: ignore[arg-type]


def test_the_edge_route_takes_a_conversation_when_the_student_reads_them(config: EdgeConfig) -> None:
    check(QueryRequest(query="1+1", messages=CHAT, route=Requested.EDGE), config, reads_conversations=True)


@pytest.mark.parametrize(
    ("budget", "limit", "expected"),
    [
        (None, None, (None, 0)),  # the cloud's own defaults
        (64, None, (64, 0)),
        (None, 100, (100 - THINK_TAG_TOKENS - 25, 25)),  # a quarter kept for the answer
        (10, 100, (10, 100 - 10 - THINK_TAG_TOKENS)),  # an explicit budget under the room is kept
        (1000, 100, (100 - THINK_TAG_TOKENS - 25, 25)),  # and one over it is cut to the room
        (None, 3, (0, 1)),  # the shortest reply: no thinking, one answer token
    ],
)
def test_the_cloud_budgets_keep_reasoning_and_answer_within_the_output_limit(
    budget: int | None, limit: int | None, expected: tuple[int | None, int]
) -> None:
    reasoning, answer = QueryRequest(query="q", max_reasoning_tokens=budget, max_output_tokens=limit).cloud_budgets()
    assert (reasoning, answer) == expected
    if limit is not None:
        assert (reasoning or 0) + answer + THINK_TAG_TOKENS <= limit
