"""What one replica does for the others when they share a session store: leases and claims.

Every replica on a shared store (:class:`~edgecloud.cloud.stores.SharedSessionStorage`) runs a
:class:`ReplicaDuties` beside its session manager:

- **renew**, every third of the lease: the leases of the sessions it runs. A session another replica
  holds now (this one stalled past its lease and was taken for dead) is dropped here; its readers
  go on following the stored log, which the other replica continues.
- **cancel**, every :data:`CANCEL_EVERY_S`: the sessions it runs that a client asked, on any
  replica, to cancel.
- **claim**, every half lease or :data:`CLAIM_EVERY_S`, whichever is sooner: unfinished sessions whose lease ran out (their replica died, or was
  drained) are leased to this replica and continue from their stored text, as after a restart:
  readers resuming from any seq they saw see no gap and no duplicate.
- **watch**, every :data:`WATCH_EVERY_S`: whether the store answers. When it stops answering, and again
  when it answers, ``on_reachable`` is told (the server turns its readiness off and on with it: a
  replica cut off from the store can serve nothing new).
- **drain**, on a graceful stop: the leases of what this replica had not finished are given back at
  once, so another replica continues them without waiting out the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from edgecloud.cloud.stores import SharedSessionStorage
from edgecloud.shared.base.errors import NotFoundError
from edgecloud.shared.reasoner.session import Event

if TYPE_CHECKING:
    from edgecloud.cloud.sessions import SessionManager

__all__ = ["ReplicaDuties", "follow_stored_log"]

log = logging.getLogger(__name__)

CLAIM_EVERY_S = 1.0
"""The longest wait between two looks for orphans: a drained replica's sessions wait no longer."""

CANCEL_EVERY_S = 0.25
"""How often a replica looks for cancel requests (one small set read)."""

WATCH_EVERY_S = 1.0
"""How often a replica checks that the store answers (a PING)."""

MAX_CLAIM = 64
"""Most sessions one look claims: a replica takes no more than it can queue."""


class ReplicaDuties:
    """Renews this replica's leases, claims orphaned sessions and hands its own back on a drain."""

    def __init__(self, manager: SessionManager, store: SharedSessionStorage) -> None:
        self.manager, self.store = manager, store
        self.claimed = 0
        """Sessions this replica took over from others (a metric for tests and benchmarks)."""
        self.reachable = True
        """Whether the store answered the last look."""
        self.on_reachable: Callable[[bool], Awaitable[None]] | None = None
        """Called when the store stops answering (False) and when it answers again (True)."""
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        lease = self.store.lease_s
        self._tasks = [
            asyncio.create_task(self._every(lease / 3, self.renew), name="renew leases"),
            asyncio.create_task(self._every(min(lease / 2, CLAIM_EVERY_S), self.claim), name="claim orphans"),
            asyncio.create_task(self._every(CANCEL_EVERY_S, self.cancel), name="cancel"),
            asyncio.create_task(self._every(WATCH_EVERY_S, self.watch), name="watch the store"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _every(self, seconds: float, duty) -> None:  # type: ignore[no-untyped-def]
        while True:
            try:
                await duty()
            except Exception:  # the store is down: try again next time, keep serving what runs here
                log.exception("replica duty %s failed; retrying in %.1fs", duty.__name__, seconds)
            await asyncio.sleep(seconds)

    async def watch(self) -> None:
        try:
            await asyncio.to_thread(self.store.ping)
            reachable, reason = True, ""
        except Exception as exc:  # noqa: BLE001  # whatever the client raises, the store is out of reach
            reachable, reason = False, f"{type(exc).__name__}: {exc}"
        if reachable == self.reachable:
            return
        self.reachable = reachable
        if reachable:
            log.warning("the session store answers again: this replica is ready")
        else:
            log.error("the session store does not answer (%s): this replica is not ready until it does", reason)
        if self.on_reachable is not None:
            await self.on_reachable(reachable)

    async def renew(self) -> None:
        running = self.manager.running_ids()
        if not running:
            return
        for session_id in await asyncio.to_thread(self.store.renew, running):
            log.warning("session %s was claimed by another replica (it missed its lease here): dropped", session_id)
            self.manager.lose(session_id)

    async def cancel(self) -> None:
        asked = self.store.cancel_requests()
        for session_id in asked.intersection(self.manager.running_ids()) if asked else ():
            with contextlib.suppress(NotFoundError):  # forgotten meanwhile
                self.manager.cancel(session_id)

    async def claim(self) -> None:
        engine = self.manager.engine
        # A batch at a time, so that the survivors of a dead replica share its sessions.
        room = min(MAX_CLAIM, engine.config.max_batch, max(0, engine.config.max_queue - engine.queue_depth))
        if room == 0:
            return
        for stored in await asyncio.to_thread(self.store.claim_orphans, room):
            log.info("continuing session %s, left unfinished by another replica", stored.session_id)
            self.manager.resume(stored)
            self.claimed += 1

    def drain(self) -> None:
        """Give back the leases of the sessions still unfinished here (the engine has stopped)."""
        running = self.manager.running_ids()
        if running:
            self.store.release(running)
            log.info("handed %d unfinished sessions back to the other replicas", len(running))


async def follow_stored_log(
    store: SharedSessionStorage, session_id: str, after_seq: int, *, wait_s: float
) -> AsyncIterator[Event]:
    """The stored log of a session another replica runs, from ``after_seq`` to its end, each event as
    soon as it is written (a blocking read, ``wait_s`` at a time)."""
    while True:
        events = await store.read_events(session_id, after_seq, wait_s=wait_s)
        for event in events:
            yield event
            if event.kind.terminal:
                return
        if events:
            after_seq = events[-1].seq
        elif store.get(session_id) is None:
            raise NotFoundError(f"session {session_id!r} expired while it was followed")
