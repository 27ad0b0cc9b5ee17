"""Shadow checks: the cloud verifies a small share of the answers the edge kept.

After the service has answered a query locally because triage was confident, it offers the
verdict here (:meth:`ShadowChecker.offer`). A share of them (``share``, drawn at random, at most
``per_minute`` and ``max_in_flight`` at a time) goes to the cloud as a *verification* session:
the same request and features, the edge's answer in the hint, ``priority: verification``. The
cloud runs it behind interactive work and refuses it first under load; a refused check is
dropped, never retried (:func:`edgecloud.edge.escalation._shed`). When the cloud's answer
arrives it is compared with the one the edge gave by the bundle's answer-matching rule
(:func:`edgecloud.shared.bundles.answers.answers_match`) and counted for the bundle version that
answered (:class:`~edgecloud.edge.field.quality.FieldCounter`).

The user's answer never waits for any of this: the check runs as a task after the answer has
been returned, and nothing it does can fail the request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import replace

from edgecloud.edge.config import ShadowPolicy
from edgecloud.edge.field.quality import FieldCounter
from edgecloud.edge.pipeline.request import QueryRequest
from edgecloud.edge.pipeline.verdict import LocalVerdict, think_params
from edgecloud.edge.seams import CloudReasoner
from edgecloud.edge.triage import Reason, Requested
from edgecloud.shared.base.errors import EdgecloudError, UnavailableError
from edgecloud.shared.bundles.answers import answers_match, rule_of
from edgecloud.shared.reasoner.session import EventKind, ThinkParams

__all__ = ["ShadowChecker", "ShadowPolicy"]

log = logging.getLogger(__name__)


class _Bucket:
    """A token bucket: ``rate`` tokens a second, holding at most ``capacity``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.at = capacity, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ShadowChecker:
    def __init__(
        self,
        client: CloudReasoner,
        counter: FieldCounter,
        policy: ShadowPolicy,
        *,
        device_id: str,
        rng: random.Random | None = None,
    ) -> None:
        self.client, self.counter, self.policy = client, counter, policy
        self.device_id = device_id
        self.skipped = 0
        """Offers drawn for a check but skipped by the rate limit or the in-flight cap."""
        self._rng = rng or random.Random()
        self._bucket = _Bucket(policy.per_minute / 60.0, max(1.0, policy.per_minute / 6.0))
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(self, request: QueryRequest, verdict: LocalVerdict) -> bool:
        """Maybe start a check of the answer the edge kept for ``request``; whether one started.
        Never blocks and never raises: it runs on the request's path."""
        kept = request.route is Requested.AUTO and verdict.decision.reason == Reason.CONFIDENT
        if not kept or not verdict.answer.text or self._rng.random() >= self.policy.share:
            return False
        if len(self._tasks) >= self.policy.max_in_flight or not self._bucket.take():
            self.skipped += 1
            return False
        task = asyncio.get_running_loop().create_task(self._check(request, verdict), name=f"shadow-{request.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait for the checks under way (tests and a graceful stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _check(self, request: QueryRequest, verdict: LocalVerdict) -> None:
        bundle = verdict.bundle
        params = replace(
            think_params(request, verdict, device_id=self.device_id),
            request_id=f"shadow-{request.id}",
            priority="verification",
            stream_reasoning=False,
        )
        try:
            answer = await self._cloud_answer(params)
        except (EdgecloudError, ValueError) as exc:  # ValueError: a request the wire refuses
            log.info("shadow check of %s not done: %s", request.id, exc)
            self.counter.shed(bundle)
            return
        except Exception:
            log.exception("shadow check of %s failed", request.id)
            self.counter.shed(bundle)
            return
        agreed = answers_match(rule_of(bundle.manifest.io), verdict.answer.text, answer)
        self.counter.checked(bundle, agreed=agreed)
        if not agreed:
            log.info(
                "shadow check of %s: %s@%d kept %r (confidence %.3f), the cloud answered %r",
                request.id, bundle.name, bundle.version, verdict.answer.text[:200], verdict.confidence, answer[:200],
            )  # fmt: skip

    async def _cloud_answer(self, params: ThinkParams) -> str:
        """The cloud's answer; a failed session is UnavailableError (counted as shed, not as a disagreement)."""
        async for event in self.client.think(params):
            if event.kind is EventKind.COMPLETED:
                return event.text
            if event.kind is EventKind.FAILED:
                failure = event.failure
                raise UnavailableError(f"the cloud session failed: {failure.code if failure else 'unknown'}")
        raise UnavailableError("the cloud's stream ended without an answer")
