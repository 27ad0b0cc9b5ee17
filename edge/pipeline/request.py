"""What a query asks, resolved and checked once.

A :class:`QueryRequest` is built at the HTTP boundary with everything already resolved: the route
(the caller's field or its model id), the thinking budget (an explicit one, or the effort's), the
output limit and the whole conversation. :func:`check` is the one domain check of a request against
the daemon's limits and the serving model; :meth:`EdgeService.stream
<edgecloud.edge.service.EdgeService.stream>` calls it once, before anything runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.session import MAX_MESSAGES, Message, Sampling
from edgecloud.shared.reasoner.thinking import THINK_TAG_TOKENS

__all__ = ["MAX_OUTPUT_TOKENS", "QueryRequest", "check"]

MAX_OUTPUT_TOKENS = 65_536
"""The largest ``max_output_tokens`` a request may ask for (the cloud caps the answer at its own limit)."""


@dataclass(frozen=True, kw_only=True)
class QueryRequest:
    query: str
    route: Requested = Requested.AUTO
    max_reasoning_tokens: int | None = None
    """The cloud's thinking budget (an explicit one, or the effort's); None: the cloud chooses."""
    include_reasoning: bool = False
    id: str = field(default_factory=lambda: f"q-{uuid.uuid4().hex}")
    max_output_tokens: int | None = None
    """The most tokens generated, reasoning and answer together (OpenAI's ``max_completion_tokens``
    and ``max_output_tokens``); None: the models' own limits. A cut answer has ``finish_reason``
    ``length``."""
    queue_when_cloud_down: bool = True
    """A query only the cloud can answer, while the cloud is down, goes to the outbox (answered later,
    by id); False: it waits up to :attr:`EdgeConfig.cloud_wait_s` for the cloud to come back, then
    fails with UnavailableError (for callers that cannot fetch a result later)."""
    messages: tuple[Message, ...] = ()
    """The whole conversation, ending with the user message that is ``query``; empty: the query alone."""
    sampling: Sampling = field(default_factory=Sampling)
    """The cloud's sampling (the edge student decodes greedily: its confidence is calibrated so)."""

    @property
    def multi_turn(self) -> bool:
        """More than the query: a system message or earlier turns."""
        return len(self.messages) > 1

    def cloud_budgets(self) -> tuple[int | None, int]:
        """The cloud's thinking budget (None: its default) and answer length (0: its default). Under
        ``max_output_tokens`` (reasoning and answer together, as OpenAI counts) a quarter of it at
        least is kept for the answer, and room for the think block's two tags (output tokens too):
        the limit holds from 3 tokens up, the cloud's shortest reply."""
        limit = self.max_output_tokens
        if limit is None:
            return self.max_reasoning_tokens, 0
        room = max(limit - THINK_TAG_TOKENS - -(-limit // 4), 0)
        reasoning = room if self.max_reasoning_tokens is None else min(self.max_reasoning_tokens, room)
        return reasoning, max(limit - reasoning - THINK_TAG_TOKENS, 1)


def check(request: QueryRequest, config: EdgeConfig, *, reads_conversations: bool) -> None:
    """Raise InvalidInputError when ``request`` breaks one of ``config``'s limits, or asks the edge
    (``reads_conversations``: whether the serving student reads whole conversations) for what it
    cannot do."""
    if not request.query.strip():
        raise InvalidInputError("query is empty")
    if len(request.query) > config.max_query_chars:
        raise InvalidInputError(f"query has {len(request.query)} characters; the limit is {config.max_query_chars}")
    if request.messages:
        total = sum(len(m.content) for m in request.messages)
        if total > config.max_conversation_chars or len(request.messages) > MAX_MESSAGES:
            raise InvalidInputError(
                f"the conversation has {len(request.messages)} messages and {total} characters; the limits are "
                f"{MAX_MESSAGES} and {config.max_conversation_chars} (nothing is cut: send fewer or "
                "shorter messages)"
            )
        if request.messages[-1] != Message("user", request.query):
            raise InvalidInputError("the conversation must end with the user message that is the query")
    if request.multi_turn and request.route is Requested.EDGE and not reads_conversations:
        raise InvalidInputError(
            "the edge model reads single queries, not conversations (a system message or earlier turns); "
            "send this one with route auto or cloud"
        )
    budget = request.max_reasoning_tokens
    if budget is not None and not 0 <= budget <= config.max_reasoning_tokens:
        raise InvalidInputError(f"max_reasoning_tokens must be in [0, {config.max_reasoning_tokens}]")
    if request.max_output_tokens is not None and not 1 <= request.max_output_tokens <= MAX_OUTPUT_TOKENS:
        raise InvalidInputError(f"max_output_tokens must be in [1, {MAX_OUTPUT_TOKENS}]")
