"""The one stand-in for the cloud in edge unit tests: a :class:`edgecloud.edge.seams.CloudReasoner`
that answers at once, or misbehaves on cue.

It has every method of the Protocol with the same parameters and async-ness as the shipped
:class:`edgecloud.edge.escalation.CloudClient` (tests/test_seams.py checks it), so the edge service
sees it exactly as it sees the real client. A test that needs another behaviour subclasses it and
overrides :meth:`FakeCloud.respond`, never the Protocol's methods. The real Reasoner over gRPC is
what the integration tests use (tests/helpers/cloud.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from edgecloud.shared.reasoner.session import Event, EventKind, ThinkParams

__all__ = ["FakeCloud"]


class FakeCloud:
    """A cloud that is up and answers every escalation at once with "0"; it keeps what it is asked.

    ``asked``: the parameters of every session, in order; ``trace_headers``: the trace context each
    came with; ``closed``: whether :meth:`close` was called. ``healthy_now`` is what :meth:`healthy`
    reports."""

    def __init__(self, *, healthy: bool = True) -> None:
        self.healthy_now = healthy
        self.asked: list[ThinkParams] = []
        self.trace_headers: list[dict[str, str]] = []
        self.closed = False

    async def think(
        self, params: ThinkParams, *, trace_headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[Event]:
        """Records the session, then yields what :meth:`respond` yields (and raises what it raises)."""
        self.asked.append(params)
        self.trace_headers.append(dict(trace_headers or {}))
        async for event in self.respond(params):
            yield event

    async def respond(self, params: ThinkParams) -> AsyncIterator[Event]:
        """The session's events: ACCEPTED, then COMPLETED with "0". Override it for another cloud."""
        session_id = f"s-{len(self.asked)}"
        yield Event(seq=1, session_id=session_id, kind=EventKind.ACCEPTED)
        yield Event(seq=2, session_id=session_id, kind=EventKind.COMPLETED, text="0")

    async def healthy(self, timeout: float = 1.0) -> bool:
        return self.healthy_now

    async def close(self) -> None:
        self.closed = True
