"""RedisChannelLayer as a Channels layer: the spec, sharding, and Redis going away."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from channels.exceptions import ChannelFull

from layerq import clock
from layerq.errors import InvalidEvent, QueueFull, TransportError
from layerq.events import Envelope, build_message, new_job_id
from layerq.jobs import JobRecord, JobStatus
from layerq.layers.redis import RedisChannelLayer
from layerq.testing import RedisServer, redis_server_binary

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="session")
def _redis_server() -> Iterator[RedisServer]:
    """A private redis-server for this module's session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_layer(
    _redis_server: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[RedisChannelLayer]:
    """A layer with a prefix of its own, flushed and closed after the test."""
    layer = RedisChannelLayer(hosts=[_redis_server.url], prefix=f"t{abs(hash(request.node.name))}")
    yield layer
    clock.set_clock(None)
    await layer.flush()
    await layer.close()


async def receive(layer: RedisChannelLayer, channel: str, timeout: float = 5) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), timeout)


# --- the Channels layer spec ---------------------------------------------------------


async def test_every_msgpack_type_round_trips(redis_layer: RedisChannelLayer) -> None:
    """A message of every msgpack-able type comes back equal."""
    message = {
        "type": "t.all",
        "text": "héllo ✓",
        "int": -(2**62),
        "float": 0.1,
        "bool": False,
        "none": None,
        "bytes": bytes(range(256)),
        "list": [1, ["two", 3.5], {"k": None}],
        "map": {"a": {"b": [True]}},
    }
    await redis_layer.send("rt", message)
    assert await receive(redis_layer, "rt") == message


async def test_integer_map_keys_are_refused_at_send(redis_layer: RedisChannelLayer) -> None:
    """A map with a non-string key fails at send, not after it left the queue."""
    with pytest.raises(InvalidEvent):
        await redis_layer.send("rt", {"type": "t", "map": {1: "one"}})
    assert await redis_layer.pending("rt") == 0


@pytest.mark.parametrize("name", ["", "a" * 100, "has space", "x{y}", 7])
async def test_invalid_names_raise_type_error(redis_layer: RedisChannelLayer, name: Any) -> None:
    """Channel and group names outside the spec's grammar raise TypeError."""
    with pytest.raises(TypeError):
        await redis_layer.send(name, {"type": "t"})
    with pytest.raises(TypeError):
        await redis_layer.group_add(name, "ok")


async def test_send_past_capacity_raises_queue_full(redis_layer: RedisChannelLayer) -> None:
    """The send past capacity raises QueueFull (a ChannelFull) and stores nothing."""
    redis_layer.capacity = 2
    await redis_layer.send("cap", {"type": "t"})
    await redis_layer.send("cap", {"type": "t"})
    with pytest.raises(ChannelFull) as raised:
        await redis_layer.send("cap", {"type": "t"})
    assert isinstance(raised.value, QueueFull)
    assert await redis_layer.pending("cap") == 2


async def test_expired_plain_messages_are_skipped_and_free_capacity(
    redis_layer: RedisChannelLayer,
) -> None:
    """Plain messages older than expiry are never received and stop counting."""
    redis_layer.capacity, redis_layer.expiry = 1, 10
    start = clock.now()
    await redis_layer.send("exp", {"type": "old"})
    clock.set_clock(lambda: start + 11)
    await redis_layer.send("exp", {"type": "new"})  # would be full without expiry
    assert (await receive(redis_layer, "exp"))["type"] == "new"
    assert await redis_layer.pending("exp") == 0


async def test_local_channels_get_their_own_messages(redis_layer: RedisChannelLayer) -> None:
    """new_channel() names are distinct and each receives only its messages."""
    first, second = await redis_layer.new_channel(), await redis_layer.new_channel()
    assert first != second
    assert first.startswith("specific.")
    assert first.split("!")[0] == second.split("!")[0]
    await redis_layer.send(second, {"type": "two"})
    await redis_layer.send(first, {"type": "one"})
    assert await receive(redis_layer, first) == {"type": "one"}
    assert await receive(redis_layer, second) == {"type": "two"}


async def test_local_channels_have_capacity_each(redis_layer: RedisChannelLayer) -> None:
    """One full '!' channel does not make the other channels of its process full."""
    redis_layer.capacity = 1
    full, free = await redis_layer.new_channel(), await redis_layer.new_channel()
    await redis_layer.send(full, {"type": "t"})
    with pytest.raises(QueueFull):
        await redis_layer.send(full, {"type": "t"})
    await redis_layer.send(free, {"type": "t"})


async def test_groups_reach_current_members_only(redis_layer: RedisChannelLayer) -> None:
    """group_send reaches added channels, not discarded ones, and skips full ones."""
    redis_layer.capacity = 1
    a, b, c = "member-a", "member-b", await redis_layer.new_channel()
    for channel in (a, b, c):
        await redis_layer.group_add("g", channel)
    await redis_layer.group_discard("g", b)
    await redis_layer.send(a, {"type": "filler"})
    await redis_layer.group_send("g", {"type": "news"})
    assert await receive(redis_layer, c) == {"type": "news"}
    assert await receive(redis_layer, a) == {"type": "filler"}
    assert await redis_layer.pending(a) == 0
    assert await redis_layer.pending(b) == 0


async def test_group_membership_expires(redis_layer: RedisChannelLayer) -> None:
    """A member added longer than group_expiry ago gets nothing."""
    redis_layer.group_expiry = 100
    start = clock.now()
    await redis_layer.group_add("g", "old-member")
    clock.set_clock(lambda: start + 101)
    await redis_layer.group_send("g", {"type": "news"})
    assert await redis_layer.pending("old-member") == 0


async def test_flush_deletes_only_its_own_prefix(
    redis_layer: RedisChannelLayer, _redis_server: RedisServer
) -> None:
    """flush() empties this layer's channels and groups and leaves other prefixes alone."""
    neighbour = RedisChannelLayer(hosts=[_redis_server.url], prefix=f"{redis_layer.prefix}x")
    try:
        await neighbour.send("kept", {"type": "t"})
        await redis_layer.send("gone", {"type": "t"})
        await redis_layer.group_add("g", "gone")
        await redis_layer.flush()
        assert await redis_layer.pending("gone") == 0
        await redis_layer.group_send("g", {"type": "t"})
        assert await redis_layer.pending("gone") == 0
        assert await neighbour.pending("kept") == 1
    finally:
        await neighbour.flush()
        await neighbour.close()


async def test_cancelled_receive_loses_no_message(redis_layer: RedisChannelLayer) -> None:
    """A receive() cancelled around a send leaves that message for the next receive()."""
    for index in range(30):
        waiting = asyncio.create_task(redis_layer.receive("cancel"))
        await asyncio.sleep(0.001 * (index % 3))
        await redis_layer.send("cancel", {"type": "t", "n": index})
        await asyncio.sleep(0.0005 * (index % 5))
        waiting.cancel()
        try:
            got = await waiting
        except asyncio.CancelledError:
            got = await receive(redis_layer, "cancel")
        assert got["n"] == index


async def test_cancelled_local_receive_loses_no_message(redis_layer: RedisChannelLayer) -> None:
    """The same holds for '!' channels, whose process reads on their behalf."""
    channel = await redis_layer.new_channel()
    for index in range(10):
        waiting = asyncio.create_task(redis_layer.receive(channel))
        await asyncio.sleep(0.001 * (index % 3))
        await redis_layer.send(channel, {"type": "t", "n": index})
        waiting.cancel()
        try:
            got = await waiting
        except asyncio.CancelledError:
            got = await receive(redis_layer, channel)
        assert got["n"] == index


async def test_concurrent_receivers_get_distinct_messages(redis_layer: RedisChannelLayer) -> None:
    """Twenty receivers on one channel share 200 messages without a duplicate."""
    got: list[int] = []

    async def drain() -> None:
        while True:
            got.append((await redis_layer.receive("many"))["n"])

    receivers = [asyncio.create_task(drain()) for _ in range(20)]
    for index in range(200):
        await redis_layer.send("many", {"type": "t", "n": index})
    for _ in range(500):
        if len(got) >= 200:
            break
        await asyncio.sleep(0.01)
    for task in receivers:
        task.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
    assert sorted(got) == list(range(200))


async def test_idle_receive_outlasts_its_blocking_timeout(redis_layer: RedisChannelLayer) -> None:
    """A receive() idle across several blocking cycles still gets the late message."""
    waiting = asyncio.create_task(redis_layer.receive("late"))
    await asyncio.sleep(2.5)
    assert not waiting.done()
    await redis_layer.send("late", {"type": "t"})
    assert await asyncio.wait_for(waiting, 2) == {"type": "t"}


# --- several hosts ----------------------------------------------------------------


async def test_local_channels_are_read_on_the_right_shard(_redis_server: RedisServer) -> None:
    """With two hosts, a '!' channel gets messages sent by another process (channels#1492)."""
    with RedisServer() as second:
        hosts = [_redis_server.url, {"address": second.url}]
        receiver = RedisChannelLayer(hosts=hosts, prefix="shard")
        sender = RedisChannelLayer(hosts=list(reversed(hosts)), prefix="shard")
        try:
            channels = [await receiver.new_channel() for _ in range(8)]
            for index, channel in enumerate(channels):
                await sender.send(channel, {"type": "t", "n": index})
            for index, channel in enumerate(channels):
                assert (await receive(receiver, channel))["n"] == index
            for index in range(20):  # plain channels spread over both hosts
                await sender.send(f"spread-{index}", {"type": "t"})
                assert await receive(receiver, f"spread-{index}") == {"type": "t"}
        finally:
            await receiver.flush()
            await receiver.close()
            await sender.close()


# --- Redis going away ---------------------------------------------------------------


def _job(channel: str) -> tuple[dict[str, Any], JobRecord]:
    job_id = new_job_id()
    message = build_message("t.job", {}, Envelope(id=job_id, enqueued=clock.now()))
    record = JobRecord(id=job_id, type="t.job", channel=channel, status=JobStatus.QUEUED)
    return message, record


async def test_operations_work_again_after_redis_restarts() -> None:
    """After Redis restarts on its port, send, receive, enqueue and claim reconnect."""
    with RedisServer() as server:
        layer = RedisChannelLayer(hosts=[server.url], prefix="restart")
        try:
            await layer.send("before", {"type": "t"})
            assert await receive(layer, "before") == {"type": "t"}
            waiting = asyncio.create_task(layer.claim(["jobs"], 1, 30, 10))
            await asyncio.sleep(0.1)
            await asyncio.to_thread(server.restart)
            message, record = _job("jobs")
            await layer.enqueue("jobs", message, record)
            [delivery] = await asyncio.wait_for(waiting, 10)
            assert delivery.job_id == record.id
            assert await layer.ack(delivery, "done", 60)
            await layer.send("after", {"type": "t"})
            assert await receive(layer, "after") == {"type": "t"}
            layer.enqueue_sync("jobs", *_job("jobs"))
            assert await layer.pending("jobs") == 1
        finally:
            await layer.close()


async def test_redis_down_past_the_retry_bound_raises_transport_error() -> None:
    """An operation gives up with TransportError when Redis stays down."""
    with RedisServer() as server:
        layer = RedisChannelLayer(hosts=[server.url], prefix="down")
        try:
            await layer.send("c", {"type": "t"})
            server.stop()
            with pytest.raises(TransportError):
                await layer.send("c", {"type": "t"})
            with pytest.raises(TransportError):
                await layer.claim(["c"], 1, 30, 0.5)
            with pytest.raises(TransportError):
                layer.get_record_sync("nope")
        finally:
            await layer.close()


# --- sync paths and test helpers ------------------------------------------------------


def test_sync_enqueue_runs_without_an_event_loop(_redis_server: RedisServer) -> None:
    """enqueue_sync, get_record_sync and cancel_sync work from plain sync code."""
    layer = RedisChannelLayer(hosts=[_redis_server.url], prefix="sync")
    message, record = _job("sync-jobs")
    layer.enqueue_sync("sync-jobs", message, record)
    fresh = RedisChannelLayer(hosts=[_redis_server.url], prefix="sync")  # no cached channel
    found = fresh.get_record_sync(record.id)
    assert found is not None
    assert found.status is JobStatus.QUEUED
    assert fresh.cancel_sync(record.id)
    cancelled = fresh.get_record_sync(record.id)
    assert cancelled is not None
    assert cancelled.status is JobStatus.CANCELLED
    assert not fresh.cancel_sync(record.id)
    asyncio.run(_close(layer, fresh))


async def _close(*layers: RedisChannelLayer) -> None:
    for layer in layers:
        await layer.flush()
        await layer.close()


def test_missing_redis_server_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server on PATH the helper names the apt-get command."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y redis-server"):
        redis_server_binary()


def test_redis_server_restarts_on_the_same_port() -> None:
    """RedisServer.restart() brings the server back on its port, answering PING."""
    with RedisServer() as server:
        port = server.port
        server.restart()
        assert server.running
        assert server.port == port
        assert server.url == f"redis://127.0.0.1:{port}/0"
    assert not server.running
