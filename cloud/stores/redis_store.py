"""Sessions in Redis, shared by every Reasoner replica: any replica serves, follows and finishes any session.

Layout (``prefix`` is ``edgecloud`` unless told otherwise; one Redis, not a cluster: the scripts
below touch several keys at once):

==============================  ==========================================================================
``{p}:s:{id}``                  hash: the request (protobuf), device, request id, budget, the ACCEPTED
                                event, ``created_at``; ``finished_at`` and the final ``info`` once it ends
``{p}:ev:{id}``                 stream: one entry per event, entry id ``{seq}-0``, so "after seq N" is a
                                stream position and an event can never be written twice
``{p}:pg:{id}``, ``{p}:hr:{id}``  an unfinished session's token counts and hidden reasoning text
``{p}:rq:{len}:{device}:{rid}`` the device's request id -> its session (idempotency across replicas)
``{p}:own:{id}``                the lease: the replica running the session, expiring after ``lease_s``
``{p}:cancel``                  set: sessions a client asked to cancel, for the replicas running them
``{p}:open:{device}``           set: the device's unfinished sessions (its quota, across replicas)
``{p}:unfinished``              sorted set by acceptance time: what a dead replica may have left
``{p}:finished``                sorted set by end time: what expiry and the result cache read
==============================  ==========================================================================

Every write that changes a session is one Lua script, so it is atomic and fenced: a replica writes a
session's events only while the lease is its own (or free), and the stream refuses a seq it already
holds. A replica that stalls past its lease while another claims the session can therefore not add a
second, different future to the log its readers follow.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import redis
import redis.asyncio

from edgecloud.cloud.stores.storage import Checkpoint, Progress, RequestTaken, StoredSession
from edgecloud.proto.edgecloud.v1 import reasoner_pb2 as pb
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.reasoner.session import Event, SessionInfo, ThinkParams
from edgecloud.shared.reasoner.wire import (
    event_from_pb,
    event_to_pb,
    session_info_from_pb,
    session_info_to_pb,
    think_request_from_pb,
    think_request_to_pb,
)

__all__ = ["RedisSessionStore"]

log = logging.getLogger(__name__)

# KEYS: session, events, request, unfinished, owner, open. ARGV: id, device, request id, request,
# budget, accepted event, created_at, replica, lease ms. Returns the session that holds the request
# id already, or nothing.
_ACCEPT = """
local taken = redis.call('GET', KEYS[3])
if taken then return taken end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'device', ARGV[2], 'request_id', ARGV[3], 'request', ARGV[4],
           'budget', ARGV[5], 'accepted', ARGV[6], 'created_at', ARGV[7])
redis.call('XADD', KEYS[2], '1-0', 'e', ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
redis.call('SET', KEYS[5], ARGV[8], 'PX', ARGV[9])
redis.call('SADD', KEYS[6], ARGV[1])
return false
"""

# Adds the events whose seq follows the stream's last (a retried write adds nothing twice).
_ADD_EVENTS = """
local function add_events(stream, first)
  local top = 0
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last > 0 then top = tonumber(string.match(last[1][1], '^(%d+)')) end
  local added = 0
  for i = first, #ARGV, 2 do
    local seq = tonumber(ARGV[i])
    if seq > top then
      redis.call('XADD', stream, ARGV[i] .. '-0', 'e', ARGV[i + 1])
      top = seq
      added = added + 1
    end
  end
  return added
end
local function fenced(owner)
  local holder = redis.call('GET', owner)
  return holder and holder ~= ARGV[1]
end
"""

# KEYS: session, events, progress, hidden, owner. ARGV: replica, reasoning tokens, answer tokens,
# hidden text, then seq, event pairs. Returns 1 written, 0 finished or unknown, -1 leased to another.
_APPEND = (
    _ADD_EVENTS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return 0 end
if fenced(KEYS[5]) then return -1 end
local added = add_events(KEYS[2], 5)
redis.call('HSET', KEYS[3], 'r', ARGV[2], 'a', ARGV[3])
if added > 0 and ARGV[4] ~= '' then redis.call('APPEND', KEYS[4], ARGV[4]) end
return 1
"""
)

# KEYS: session, events, progress, hidden, owner, unfinished, finished, open, cancel. ARGV:
# replica, finished_at, info, session id, then seq, event pairs. Returns as _APPEND.
_FINISH = (
    _ADD_EVENTS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return 0 end
if fenced(KEYS[5]) then return -1 end
add_events(KEYS[2], 5)
redis.call('HSET', KEYS[1], 'finished_at', ARGV[2], 'info', ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[4])
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[4])
redis.call('SREM', KEYS[8], ARGV[4])
redis.call('SREM', KEYS[9], ARGV[4])
return 1
"""
)

# KEYS: owner. ARGV: replica, lease ms. Returns 1 held (renewed, or taken back while free), 0 held
# by another.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1 end
return 0
"""

# KEYS: owner, session. ARGV: replica, lease ms. Takes a free lease of an unfinished session.
_CLAIM = """
if redis.call('HEXISTS', KEYS[2], 'finished_at') == 1 or redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# KEYS: owner. ARGV: replica. Gives the lease up if it is this replica's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisSessionStore:
    """The shared :class:`~.storage.SharedSessionStorage` on one Redis (``redis://host:port/db``).

    Thread-safe (redis-py's connection pool); :meth:`read_events` uses an asyncio client on the
    caller's loop, so a follower waiting for the next event holds no thread.
    """

    def __init__(
        self,
        url: str,
        *,
        lease_s: float = 5.0,
        replica: str | None = None,
        prefix: str = "edgecloud",
        password: str | None = None,
    ) -> None:
        if lease_s <= 0:
            raise ConfigError(f"store lease must be > 0 seconds, got {lease_s}")
        self.url, self.lease_s, self.prefix, self._password = url, lease_s, prefix, password
        self.replica = replica or uuid.uuid4().hex[:12]
        self._lease_ms = max(1, int(lease_s * 1000))
        try:
            self._redis = redis.Redis.from_url(
                url, password=password, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
            )
            self._redis.ping()
        except (redis.RedisError, ValueError) as exc:
            raise ConfigError(f"cannot reach the session store at {url}: {exc}") from exc
        self._async: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}
        self._accept = self._redis.register_script(_ACCEPT)
        self._append = self._redis.register_script(_APPEND)
        self._finish = self._redis.register_script(_FINISH)
        self._renew = self._redis.register_script(_RENEW)
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)

    # -- keys --------------------------------------------------------------------------

    def _key(self, kind: str, session_id: str) -> str:
        return f"{self.prefix}:{kind}:{session_id}"

    def _request_key(self, device_id: str, request_id: str) -> str:
        return f"{self.prefix}:rq:{len(device_id)}:{device_id}:{request_id}"  # the length keeps ':' in ids apart

    def _open_key(self, device_id: str) -> str:
        return f"{self.prefix}:open:{len(device_id)}:{device_id}"

    def _session_keys(self, session_id: str) -> list[str]:
        return [self._key(kind, session_id) for kind in ("s", "ev", "pg", "hr", "own")]

    # -- writes ------------------------------------------------------------------------

    def accept(self, session_id: str, params: ThinkParams, budget: int, accepted: Event) -> None:
        keys = [
            self._key("s", session_id),
            self._key("ev", session_id),
            self._request_key(params.device_id, params.request_id),
            f"{self.prefix}:unfinished",
            self._key("own", session_id),
            self._open_key(params.device_id),
        ]
        args = [
            session_id,
            params.device_id,
            params.request_id,
            think_request_to_pb(params).SerializeToString(),
            budget,
            event_to_pb(accepted).SerializeToString(),
            repr(time.time()),
            self.replica,
            self._lease_ms,
        ]
        taken = self._accept(keys=keys, args=args)
        if taken is not None:
            raise RequestTaken(taken.decode())

    def append(self, checkpoints: Sequence[Checkpoint]) -> None:
        pipe = self._redis.pipeline(transaction=True)  # all checkpoints in one MULTI
        for checkpoint in checkpoints:
            args: list[Any] = [
                self.replica,
                checkpoint.reasoning_tokens,
                checkpoint.answer_tokens,
                checkpoint.hidden_reasoning,
            ]
            for event in checkpoint.events:
                args += [event.seq, event_to_pb(event).SerializeToString()]
            self._append(keys=self._session_keys(checkpoint.session_id), args=args, client=pipe)
        if checkpoints:
            pipe.execute()

    def finish(self, info: SessionInfo, events: list[Event]) -> None:
        keys = [
            *self._session_keys(info.session_id),
            f"{self.prefix}:unfinished",
            f"{self.prefix}:finished",
            self._open_key(info.device_id),  # the session's own device: SessionInfo carries it
            f"{self.prefix}:cancel",
        ]
        args: list[Any] = [
            self.replica,
            repr(time.time()),
            session_info_to_pb(info).SerializeToString(),
            info.session_id,
        ]
        for event in events:
            args += [event.seq, event_to_pb(event).SerializeToString()]
        if self._finish(keys=keys, args=args) == -1:
            log.warning("session %s is leased to another replica now: its end here is not written", info.session_id)

    def expire(self, finished_before: float) -> int:
        ids = [i.decode() for i in self._redis.zrangebyscore(f"{self.prefix}:finished", "-inf", finished_before)]
        if not ids:
            return 0
        pipe = self._redis.pipeline(transaction=True)
        for session_id, (device, request_id) in zip(ids, self._requests(ids), strict=True):
            pipe.delete(*self._session_keys(session_id))
            pipe.srem(f"{self.prefix}:cancel", session_id)
            if device is not None:
                pipe.delete(self._request_key(device, request_id))
            pipe.zrem(f"{self.prefix}:finished", session_id)
        pipe.execute()
        return len(ids)

    def _requests(self, ids: list[str]) -> list[tuple[str | None, str]]:
        pipe = self._redis.pipeline(transaction=False)
        for session_id in ids:
            pipe.hmget(self._key("s", session_id), ["device", "request_id"])
        return [
            (device.decode(), request_id.decode()) if device is not None else (None, "")
            for device, request_id in pipe.execute()
        ]

    # -- reads -------------------------------------------------------------------------

    _FIELDS = ("request", "budget", "accepted", "created_at", "info")

    def _stored(self, session_id: str, row: list[bytes | None]) -> StoredSession | None:
        request, budget, accepted, created_at, info = row
        if request is None or budget is None or accepted is None or created_at is None:
            return None
        return StoredSession(
            session_id=session_id,
            params=think_request_from_pb(pb.ThinkRequest.FromString(request)),
            budget=int(budget),
            accepted=event_from_pb(pb.ThinkEvent.FromString(accepted)),
            created_at=float(created_at),
            info=session_info_from_pb(pb.SessionInfo.FromString(info)) if info is not None else None,
        )

    def get(self, session_id: str) -> StoredSession | None:
        return self._stored(session_id, self._redis.hmget(self._key("s", session_id), list(self._FIELDS)))

    def _many(self, ids: list[str]) -> Iterator[StoredSession]:
        pipe = self._redis.pipeline(transaction=False)
        for session_id in ids:
            pipe.hmget(self._key("s", session_id), list(self._FIELDS))
        for session_id, row in zip(ids, pipe.execute(), strict=True):
            stored = self._stored(session_id, row)
            if stored is not None:
                yield stored

    def find_request(self, request_id: str, device_id: str = "") -> StoredSession | None:
        session_id = self._redis.get(self._request_key(device_id, request_id))
        return self.get(session_id.decode()) if session_id is not None else None

    def events(self, session_id: str) -> list[Event]:
        return [_event(fields) for _, fields in self._redis.xrange(self._key("ev", session_id))]

    def progress(self, session_id: str) -> Progress:
        pipe = self._redis.pipeline(transaction=True)  # the events and the counts of one checkpoint
        pipe.xrange(self._key("ev", session_id))
        pipe.hmget(self._key("pg", session_id), ["r", "a"])
        pipe.get(self._key("hr", session_id))
        entries, (reasoning, answer), hidden = pipe.execute()
        return Progress(
            [_event(fields) for _, fields in entries],
            int(reasoning or 0),
            int(answer or 0),
            hidden.decode() if hidden else "",
        )

    def unfinished(self) -> Iterator[StoredSession]:
        ids = [i.decode() for i in self._redis.zrange(f"{self.prefix}:unfinished", 0, -1)]
        return (s for s in self._many(ids) if s.info is None)

    def completed(self, limit: int) -> Iterator[StoredSession]:
        if limit <= 0:
            return iter(())
        ids = [i.decode() for i in self._redis.zrevrange(f"{self.prefix}:finished", 0, limit - 1)]
        return self._many(ids)

    def close(self) -> None:
        self._redis.close()

    async def aclose(self) -> None:
        """Close the asyncio client of the running loop (the one :meth:`read_events` uses)."""
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- what replicas share -----------------------------------------------------------

    def renew(self, session_ids: Collection[str]) -> set[str]:
        ids = list(session_ids)
        if not ids:
            return set()
        pipe = self._redis.pipeline(transaction=False)
        for session_id in ids:
            self._renew(keys=[self._key("own", session_id)], args=[self.replica, self._lease_ms], client=pipe)
        return {session_id for session_id, held in zip(ids, pipe.execute(), strict=True) if not held}

    def claim_orphans(self, limit: int) -> list[StoredSession]:
        ids = [i.decode() for i in self._redis.zrange(f"{self.prefix}:unfinished", 0, -1)]
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for session_id in ids:
            pipe.exists(self._key("own", session_id))
        free = [session_id for session_id, held in zip(ids, pipe.execute(), strict=True) if not held]
        claimed = []
        for session_id in free:
            if len(claimed) >= limit:
                break
            if self._claim(
                keys=[self._key("own", session_id), self._key("s", session_id)],
                args=[
                    self.replica,
                    self._lease_ms,
                ],
            ):
                claimed.append(session_id)
        return [s for s in self._many(claimed) if s.info is None]

    def release(self, session_ids: Collection[str]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for session_id in session_ids:
            self._release(keys=[self._key("own", session_id)], args=[self.replica], client=pipe)
        if session_ids:
            pipe.execute()

    async def read_events(self, session_id: str, after_seq: int, *, wait_s: float) -> list[Event]:
        client = self._async_client()
        block = int(wait_s * 1000) if wait_s > 0 else None
        found = await client.xread({self._key("ev", session_id): f"{after_seq}-0"}, count=256, block=block)
        return [_event(fields) for _, entries in found for _, fields in entries]

    def _async_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = self._async[loop] = redis.asyncio.Redis.from_url(
                self.url, password=self._password, socket_connect_timeout=5
            )
        return client

    def request_cancel(self, session_id: str) -> None:
        self._redis.sadd(f"{self.prefix}:cancel", session_id)

    def cancel_requests(self) -> set[str]:
        return {i.decode() for i in self._redis.smembers(f"{self.prefix}:cancel")}

    def ping(self) -> None:
        self._redis.ping()

    def open_sessions(self, device_id: str) -> int:
        return int(self._redis.scard(self._open_key(device_id)))


def _event(fields: dict[bytes, bytes]) -> Event:
    return event_from_pb(pb.ThinkEvent.FromString(fields[b"e"]))
