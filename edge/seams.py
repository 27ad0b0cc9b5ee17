"""The edge's declared seams: what the service needs from its model and from the cloud.

:class:`EdgeService` and the outbox deliverer are written against these
Protocols, not against the shipped implementations, so a second one plugs in
without touching them: another on-device runtime (a TensorRT or Core ML
student, a model served by another process) in place of
:class:`edgecloud.edge.runtime.EdgeModel`, and another way to reach the cloud
(a second Reasoner region, a queue) in place of
:class:`edgecloud.edge.escalation.CloudClient`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from edgecloud.edge.calibration import Calibration
    from edgecloud.edge.runtime import EdgeAnswer
    from edgecloud.shared.reasoner.session import Event, ThinkParams

__all__ = ["AnswerModel", "CloudReasoner"]


@runtime_checkable
class AnswerModel(Protocol):
    """A loaded edge model. ``answer`` is called from worker threads, concurrently."""

    calibration: Calibration | None
    """The bundle's triage calibration (None: uncalibrated, so nothing is confident)."""

    def answer(self, query: str) -> EdgeAnswer:
        """The model's answer to ``query`` with its confidence (0 for an abstention, NaN when
        uncalibrated), token log-probabilities and feature vector. Raises nothing on a query it
        cannot answer: it abstains (empty text)."""


@runtime_checkable
class CloudReasoner(Protocol):
    """The cloud as the edge service sees it."""

    def think(self, params: ThinkParams, *, trace_headers: Mapping[str, str] | None = None) -> AsyncIterator[Event]:
        """One session's events, each ``seq`` once and in order, ending with COMPLETED or FAILED.
        ``trace_headers``: the caller's W3C trace context, for the cloud's spans to join.
        Idempotent by ``params.request_id``. Raises an :mod:`edgecloud.shared.base.errors` error:
        UnavailableError when the cloud cannot be reached within its deadline (the one timer on an
        escalation: the service sets none of its own),
        InvalidInputError or AuthenticationError when it refuses the request."""

    async def healthy(self, timeout: float = 1.0) -> bool:
        """Whether the cloud reports SERVING now; never raises."""

    async def close(self) -> None:
        """Release connections; calls after it fail."""
