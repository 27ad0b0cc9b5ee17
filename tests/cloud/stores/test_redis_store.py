"""The Redis session store against a real redis-server: the SQLite store's contract, plus what
replicas share (leases, fencing, claiming a dead replica's sessions, following a log, cancel, quotas)."""

from __future__ import annotations

import asyncio
import time

import pytest

from edgecloud.cloud.stores import (
    Checkpoint,
    Progress,
    RequestTaken,
    SessionStorage,
    SharedSessionStorage,
    is_shared_store,
    open_session_store,
)
from edgecloud.cloud.stores.redis_store import RedisSessionStore
from edgecloud.shared.base.errors import ConfigError
from edgecloud.shared.reasoner.session import Event, EventKind, SessionInfo, SessionStatus, ThinkParams, Usage
from tests.helpers.redis_server import RedisServer
from tests.helpers.waiting import free_port


def accepted(session_id: str) -> Event:
    return Event(1, session_id, EventKind.ACCEPTED, reasoning_budget=64, model_name="m", model_version=1)


def completed(session_id: str, seq: int, text: str = "5") -> Event:
    return Event(seq, session_id, EventKind.COMPLETED, text=text, usage=Usage(3, 4, 5), finish_reason="stop")


def info(session_id: str, request_id: str, last_seq: int, device: str = "") -> SessionInfo:
    return SessionInfo(session_id, request_id, SessionStatus.COMPLETED, last_seq, answer="5", device_id=device)


def test_the_redis_store_is_a_shared_session_storage(redis_server: RedisServer) -> None:
    store = open_session_store(redis_server.url, lease_s=2.0, replica="r1")
    assert is_shared_store(redis_server.url) and not is_shared_store("cloud-sessions.sqlite3")
    assert isinstance(store, RedisSessionStore) and store.replica == "r1" and store.lease_s == 2.0
    assert isinstance(store, SessionStorage) and isinstance(store, SharedSessionStorage)
    store.close()


def test_an_unreachable_store_is_a_config_error_naming_it() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError, match=f"cannot reach the session store at {url}"):
        RedisSessionStore(url)
    with pytest.raises(ConfigError, match="lease"):
        RedisSessionStore(url, lease_s=0)


def test_accept_finish_find_and_expire_across_a_redis_restart(redis_server: RedisServer) -> None:
    store = RedisSessionStore(redis_server.url)
    params = ThinkParams(request_id="r1", query="2+3", device_id="d:1", max_reasoning_tokens=64)
    store.accept("s1", params, 64, accepted("s1"))
    store.accept("s2", ThinkParams(request_id="r2", query="4*5"), 32, accepted("s2"))
    events = [accepted("s1"), Event(2, "s1", EventKind.ANSWER_DELTA, text="5"), completed("s1", 3)]
    store.finish(info("s1", "r1", 3, "d:1"), events)
    store.close()
    redis_server.stop()
    redis_server.start()  # the append-only file keeps every write

    store = RedisSessionStore(redis_server.url)
    found = store.find_request("r1", "d:1")
    assert found is not None and found.params == params and found.budget == 64
    assert found.info is not None and found.info.answer == "5"
    assert store.events("s1") == events
    assert [s.session_id for s in store.unfinished()] == ["s2"]
    assert [s.session_id for s in store.completed(10)] == ["s1"]
    with pytest.raises(RequestTaken, match="s1") as taken:  # once per device, whichever replica asks
        RedisSessionStore(redis_server.url).accept("s3", params, 64, accepted("s3"))
    assert taken.value.session_id == "s1" and store.get("s3") is None  # the refused one left nothing
    store.accept("s4", ThinkParams(request_id="r1", query="9-1", device_id="d"), 8, accepted("s4"))
    assert store.find_request("r1", "d").session_id == "s4"  # type: ignore[union-attr]  # ':' in ids stays apart
    assert store.find_request("r1") is None
    assert store.expire(time.time() + 1) == 1  # only finished sessions expire
    assert store.get("s1") is None and store.events("s1") == [] and store.find_request("r1", "d:1") is None
    assert store.get("s2") is not None and list(store.completed(10)) == []
    store.close()


def test_checkpoints_add_once_until_the_session_finishes(redis_server: RedisServer) -> None:
    store = RedisSessionStore(redis_server.url)
    store.accept("s1", ThinkParams(request_id="r1", query="2+3"), 64, accepted("s1"))
    assert store.progress("s1") == Progress([accepted("s1")])
    first = (Event(2, "s1", EventKind.REASONING_PROGRESS, reasoning_tokens=16),)
    second = (
        Event(3, "s1", EventKind.REASONING_PROGRESS, reasoning_tokens=20),
        Event(4, "s1", EventKind.ANSWER_DELTA, text="5"),
    )
    store.append([Checkpoint("s1", first, reasoning_tokens=16, hidden_reasoning="2+3 is ")])
    store.append([Checkpoint("s1", first, reasoning_tokens=16, hidden_reasoning="2+3 is ")])  # a retried write
    store.append([Checkpoint("s1", second, reasoning_tokens=20, answer_tokens=1, hidden_reasoning="5.")])
    store.append([Checkpoint("gone", first, reasoning_tokens=16)])  # a session forgotten meanwhile: ignored
    assert store.progress("s1") == Progress([accepted("s1"), *first, *second], 20, 1, "2+3 is 5.")
    final = [accepted("s1"), *first, *second, completed("s1", 5)]
    store.finish(info("s1", "r1", 5), final)
    store.append([Checkpoint("s1", (Event(5, "s1", EventKind.ANSWER_DELTA, text="!"),), answer_tokens=2)])
    store.finish(SessionInfo("s1", "r1", SessionStatus.FAILED, 5), final)  # a second end: ignored
    assert store.progress("s1") == Progress(final) and list(store.unfinished()) == []
    assert store.get("s1").info.status is SessionStatus.COMPLETED  # type: ignore[union-attr]
    store.close()


def test_a_dead_replicas_session_is_claimed_once_and_the_old_owner_is_fenced_off(redis_server: RedisServer) -> None:
    one = RedisSessionStore(redis_server.url, lease_s=0.3, replica="one")
    two = RedisSessionStore(redis_server.url, lease_s=0.3, replica="two")
    three = RedisSessionStore(redis_server.url, lease_s=0.3, replica="three")
    one.accept("s1", ThinkParams(request_id="r1", query="2+3"), 64, accepted("s1"))
    assert two.claim_orphans(10) == []  # leased to its replica from the moment it is accepted
    time.sleep(0.2)
    assert one.renew(["s1"]) == set()
    time.sleep(0.2)
    assert two.claim_orphans(10) == []  # renewed: still one's
    time.sleep(0.4)  # one stops renewing (it died)
    claimed = two.claim_orphans(10)
    assert [s.session_id for s in claimed] == ["s1"] and claimed[0].info is None
    assert three.claim_orphans(10) == []  # claimed once
    assert one.renew(["s1"]) == {"s1"}  # one wakes up: the session is not its own any more
    stale = (Event(2, "s1", EventKind.ANSWER_DELTA, text="7"),)
    one.append([Checkpoint("s1", stale, answer_tokens=1)])
    one.finish(info("s1", "r1", 2), [accepted("s1"), completed("s1", 2, "7")])
    assert one.events("s1") == [accepted("s1")] and one.get("s1").info is None  # type: ignore[union-attr]
    fresh = (Event(2, "s1", EventKind.ANSWER_DELTA, text="5"),)
    two.append([Checkpoint("s1", fresh, answer_tokens=1)])
    two.finish(info("s1", "r1", 3), [accepted("s1"), *fresh, completed("s1", 3)])
    assert [e.text for e in one.events("s1")] == ["", "5", "5"]
    for store in (one, two, three):
        store.close()


def test_a_released_session_is_claimed_at_once_and_cancel_requests_reach_its_owner(redis_server: RedisServer) -> None:
    one = RedisSessionStore(redis_server.url, lease_s=30, replica="one")
    two = RedisSessionStore(redis_server.url, lease_s=30, replica="two")
    one.accept("s1", ThinkParams(request_id="r1", query="2+3", device_id="d"), 64, accepted("s1"))
    one.accept("s2", ThinkParams(request_id="r2", query="2+4", device_id="d"), 64, accepted("s2"))
    assert one.open_sessions("d") == two.open_sessions("d") == 2 and two.open_sessions("e") == 0
    two.release(["s1"])  # not two's to give
    assert two.claim_orphans(10) == []
    one.release(["s1"])  # a graceful drain
    assert [s.session_id for s in two.claim_orphans(10)] == ["s1"]
    one.request_cancel("s1")
    assert two.cancel_requests() == one.cancel_requests() == {"s1"} and two.renew(["s1"]) == set()
    two.finish(info("s1", "r1", 2, "d"), [accepted("s1"), completed("s1", 2)])
    assert one.open_sessions("d") == 1  # the quota counts unfinished sessions only
    assert one.cancel_requests() == set()  # an ended session's request is done
    one.close()
    two.close()


def test_a_follower_on_another_replica_gets_each_event_once_as_it_is_written(redis_server: RedisServer) -> None:
    writer = RedisSessionStore(redis_server.url, replica="writer")
    reader = RedisSessionStore(redis_server.url, replica="reader")
    writer.accept("s1", ThinkParams(request_id="r1", query="2+3"), 64, accepted("s1"))

    async def follow() -> list[Event]:
        seen: list[Event] = []
        while not seen or seen[-1].kind is not EventKind.COMPLETED:
            seen += await reader.read_events("s1", seen[-1].seq if seen else 0, wait_s=5.0)
        await reader.aclose()
        return seen

    async def scenario() -> list[Event]:
        task = asyncio.create_task(follow())
        await asyncio.sleep(0.1)
        for seq, text in [(2, "5"), (3, "!")]:
            event = Event(seq, "s1", EventKind.ANSWER_DELTA, text=text)
            await asyncio.to_thread(writer.append, [Checkpoint("s1", (event,), answer_tokens=seq - 1)])
            await asyncio.sleep(0.05)
        final = [accepted("s1"), *writer.events("s1")[1:], completed("s1", 4, "5!")]
        await asyncio.to_thread(writer.finish, info("s1", "r1", 4), final)
        return await asyncio.wait_for(task, 10)

    seen = asyncio.run(scenario())
    assert [e.seq for e in seen] == [1, 2, 3, 4] and seen[-1].text == "5!"

    async def after_the_end() -> list[Event]:
        try:
            return await reader.read_events("s1", 4, wait_s=0)
        finally:
            await reader.aclose()

    assert asyncio.run(after_the_end()) == []  # nothing after the end, at once
    writer.close()
    reader.close()
