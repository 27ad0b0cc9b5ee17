"""From what OpenAI's two APIs ask to one :class:`~edgecloud.edge.pipeline.request.QueryRequest`,
resolved once for both: ``POST /v1/chat/completions`` and ``POST /v1/responses``.

- the route: edgecloud's ``route`` field when given, else the model id (:data:`MODEL_ROUTES`; any
  other id is triaged like ``edgecloud``);
- the cloud's thinking budget: an explicit ``max_reasoning_tokens``, else the effort's
  (:attr:`EdgeConfig.reasoning_effort_tokens <edgecloud.edge.config.EdgeConfig.reasoning_effort_tokens>`
  for low, medium and high), else the cloud's own choice;
- the query and the conversation: the text of each message (a part that is not text is refused,
  not dropped); the last message is the user's query, and a single one is a plain query.

The limits are checked once, by the service (:func:`edgecloud.edge.pipeline.request.check`).
"""

from __future__ import annotations

from typing import Any

from edgecloud.edge.config import EdgeConfig
from edgecloud.edge.pipeline.request import QueryRequest
from edgecloud.edge.triage import Requested
from edgecloud.shared.base.errors import InvalidInputError
from edgecloud.shared.reasoner.session import Message

__all__ = ["EFFORTS", "MODEL_ROUTES", "message_text", "openai_request"]

MODEL_ROUTES = {"edgecloud": Requested.AUTO, "edgecloud-edge": Requested.EDGE, "edgecloud-cloud": Requested.CLOUD}
"""The model ids ``GET /v1/models`` lists, and the route each one asks for."""
EFFORTS = ("low", "medium", "high")


def message_text(content: str | list[dict[str, Any]] | None, where: str, text_types: tuple[str, ...]) -> str:
    """The text of one message's content; a part that is not text is refused, not dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type")
        if kind not in text_types or not isinstance(part.get("text"), str):
            raise InvalidInputError(f"{where}.content[{index}] is of type {kind!r}; only text content is supported")
        texts.append(part["text"])
    return "".join(texts)


def openai_request(
    config: EdgeConfig,
    *,
    model: str,
    route: str | None,
    max_reasoning_tokens: int | None,
    effort: str | None,
    turns: list[tuple[str, str]],
    where: str,
    **rest: Any,
) -> QueryRequest:
    """The request of ``turns`` (role and text of each message, ``where`` naming them in errors),
    routed and budgeted as the module docstring says; ``rest``: the other fields of the request."""
    if not turns or turns[-1][0] != "user":
        raise InvalidInputError(f"the last of the {where} must be a user message (the query)")
    budget = max_reasoning_tokens
    if budget is None and effort is not None:
        budget = config.reasoning_effort_tokens[EFFORTS.index(effort)]
    return QueryRequest(
        query=turns[-1][1],
        messages=tuple(Message(role, text) for role, text in turns) if len(turns) > 1 else (),
        route=Requested(route) if route else MODEL_ROUTES.get(model, Requested.AUTO),
        max_reasoning_tokens=budget,
        **rest,
    )
