"""What only RedisChannelLayer has to get right: prefixes, shards, blocking reads, outages."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from layerq import clock
from layerq.errors import TransportError
from layerq.events import Envelope, build_message, new_job_id
from layerq.jobs import JobRecord, JobStatus
from layerq.layers import redis_codec as codec
from layerq.layers.redis import RedisChannelLayer
from layerq.testing import RedisServer, redis_server_binary
from tests.app.events import Add
from tests.conftest import running_worker

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def redis_layer(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[RedisChannelLayer]:
    """A layer with a prefix of its own, flushed and closed after the test."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=f"r{abs(hash(request.node.name))}")
    yield layer
    await layer.flush()
    await layer.close()


async def receive(layer: RedisChannelLayer, channel: str, timeout: float = 5) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), timeout)


def job(channel: str) -> tuple[dict[str, Any], JobRecord]:
    """A job message and its queued record."""
    job_id = new_job_id()
    message = build_message("t.job", {}, Envelope(id=job_id, enqueued=clock.now()))
    return message, JobRecord(id=job_id, type="t.job", channel=channel, status=JobStatus.QUEUED)


async def test_flush_deletes_only_its_own_prefix(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """flush() empties this layer's keys (by SCAN) and leaves other prefixes alone."""
    neighbour = RedisChannelLayer(hosts=[redis_server.url], prefix=f"{redis_layer.prefix}x")
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


async def test_idle_receive_outlasts_its_blocking_timeout(redis_layer: RedisChannelLayer) -> None:
    """A receive() idle across several blocking cycles still gets the late message (#422)."""
    waiting = asyncio.create_task(redis_layer.receive("late"))
    await asyncio.sleep(2.5)
    assert not waiting.done()
    await redis_layer.send("late", {"type": "t"})
    assert await asyncio.wait_for(waiting, 2) == {"type": "t"}


async def test_a_receive_cancelled_as_its_reply_is_read_leaves_it_to_the_next(
    redis_layer: RedisChannelLayer,
) -> None:
    """The take's reply read in the loop turn of the cancel, before the cancelled
    receive resumes: the message goes to the next receive, which does not hang."""
    await redis_layer.send("race", {"type": "t", "n": 1})
    assert await redis_layer.pending("race") == 1  # the connection is open and idle
    task = asyncio.create_task(redis_layer.receive("race"))
    await asyncio.sleep(0)  # the receive writes its take and waits
    # Blocking the loop on purpose, so that the take's reply waits in the socket.
    time.sleep(0.05)  # noqa: ASYNC251
    # Resumed next turn, ahead of the read of that reply in the same turn: the
    # cancel below is handled by the receive only after the reply was read.
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(redis_layer.receive("race"), 2) == {"type": "t", "n": 1}


async def test_local_channels_are_read_on_the_right_shard(redis_server: RedisServer) -> None:
    """With two hosts, a '!' channel gets messages sent by another process (channels#1492)."""
    with RedisServer() as second:
        hosts: list[Any] = [redis_server.url, {"address": second.url}]
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


async def test_finished_records_expire_in_redis(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """A settled record is removed by Redis itself after its ttl, not only hidden."""
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
    await redis_layer.ack(delivery, 1, 0.2)
    await asyncio.sleep(0.4)
    fresh = RedisChannelLayer(hosts=[redis_server.url], prefix=redis_layer.prefix)
    try:
        assert await fresh.get_record(record.id) is None
    finally:
        await fresh.close()


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
            message, record = job("jobs")
            await layer.enqueue("jobs", message, record)
            [delivery] = await asyncio.wait_for(waiting, 10)
            assert delivery.job_id == record.id
            assert await layer.ack(delivery, "done", 60)
            await layer.send("after", {"type": "t"})
            assert await receive(layer, "after") == {"type": "t"}
            layer.enqueue_sync("jobs", *job("jobs"))
            assert await layer.pending("jobs") == 1
        finally:
            await layer.close()


async def test_claim_during_an_outage_recovers_within_its_wait() -> None:
    """A claim spanning a Redis stop and start returns the job enqueued after it."""
    with RedisServer() as server:
        layer = RedisChannelLayer(hosts=[server.url], prefix="outage")
        try:
            await layer.claim(["q"], 1, 30, 0)
            server.stop()
            waiting = asyncio.create_task(layer.claim(["q"], 1, 30, 8))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)
            message, record = job("q")
            await layer.enqueue("q", message, record)
            [delivery] = await asyncio.wait_for(waiting, 10)
            assert delivery.job_id == record.id
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


def test_a_fresh_layer_finds_a_record_by_job_id_alone(redis_server: RedisServer) -> None:
    """get_record_sync and cancel_sync work in a process that never saw the job."""
    sender = RedisChannelLayer(hosts=[redis_server.url], prefix="locate")
    message, record = job("sync-jobs")
    sender.enqueue_sync("sync-jobs", message, record)
    fresh = RedisChannelLayer(hosts=[redis_server.url], prefix="locate")
    found = fresh.get_record_sync(record.id)
    assert found is not None
    assert found.status is JobStatus.QUEUED
    assert fresh.cancel_sync(record.id)
    assert not fresh.cancel_sync(record.id)

    async def close() -> None:
        await fresh.flush()
        await sender.close()
        await fresh.close()

    asyncio.run(close())


async def test_a_send_writes_no_record_hash_until_its_job_is_taken(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """A waiting job's record is read from its stored message (one hash write less a
    send); the claim writes what changed, and the end writes the whole record."""
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    key = f"{{{redis_layer.prefix}:q}}:job:{record.id}"
    inspector = redis.Redis.from_url(redis_server.url)
    try:
        assert inspector.exists(key) == 0
        found = await redis_layer.get_record(record.id)
        assert found is not None
        assert (found.status, found.type, found.channel) == (JobStatus.QUEUED, "t.job", "q")
        [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
        assert set(inspector.hkeys(key)) == {b"status", b"attempt", b"started_at"}
        assert await redis_layer.ack(delivery, 3, 60)
        fixed = codec.decode_value(inspector.hget(key, "fixed"))  # the fields, packed
        assert {"id", "type", "channel", "enqueued_at"} <= set(fixed[::2])
    finally:
        inspector.close()
    found = await redis_layer.get_record(record.id)
    assert found is not None
    assert (found.status, found.type, found.result) == (JobStatus.SUCCEEDED, "t.job", 3)


async def test_a_job_message_sent_as_a_plain_message_gets_a_record_when_taken(
    redis_layer: RedisChannelLayer,
) -> None:
    """A layerq job message sent with Channels' send() still runs with a record."""
    message, record = job("q")
    await redis_layer.send("q", message)
    [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
    running = await redis_layer.get_record(record.id)
    assert running is not None
    assert (running.status, running.type, running.attempt) == (JobStatus.RUNNING, "t.job", 1)
    assert await redis_layer.dead_letter(delivery, "boom", "ValueError", "bad", 60)
    failed = await redis_layer.get_record(record.id)
    assert failed is not None
    assert (failed.status, failed.type, failed.channel) == (JobStatus.FAILED, "t.job", "q")


async def test_a_job_on_a_process_local_channel_keeps_its_full_channel_name(
    redis_layer: RedisChannelLayer,
) -> None:
    """Its record names the channel it was sent to, waiting, running, ended, cancelled."""
    for ending in ("ack", "cancel"):
        message, record = job("a.b!c")
        await redis_layer.enqueue("a.b!c", message, record)
        found = await redis_layer.get_record(record.id)
        assert found is not None
        assert (found.status, found.channel) == (JobStatus.QUEUED, "a.b!c")
        if ending == "cancel":
            assert await redis_layer.cancel(record.id)
            expected = JobStatus.CANCELLED
        else:
            [delivery] = await redis_layer.claim(["a.b!c"], 1, 30, 0)
            found = await redis_layer.get_record(record.id)
            assert found is not None
            assert (found.status, found.channel) == (JobStatus.RUNNING, "a.b!c")
            assert await redis_layer.ack(delivery, 1, 60)
            expected = JobStatus.SUCCEEDED
        found = await redis_layer.get_record(record.id)
        assert found is not None
        assert (found.status, found.channel, found.type) == (expected, "a.b!c", "t.job")


def test_missing_redis_server_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server on PATH the test helper names the apt-get command."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y redis-server"):
        redis_server_binary()


def test_redis_server_restarts_on_the_same_port() -> None:
    """RedisServer.restart() brings the server back on its port, answering PING."""
    with RedisServer() as server:
        port = server.port
        server.restart()
        assert server.running
        assert server.url == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port)
        try:
            assert client.ping()
        finally:
            client.close()
    assert not server.running


def commands_processed(server: RedisServer) -> int:
    """Commands the server has run so far (INFO stats), to tell waiting from polling."""
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


async def end_job(layer: RedisChannelLayer, how: str, job_id: str) -> None:
    """Finish a queued job of channel "q" by ack, dead letter or cancel."""
    if how == "cancel":
        assert await layer.cancel(job_id)
        return
    [delivery] = await layer.claim(["q"], 1, 30, 0)
    if how == "ack":
        assert await layer.ack(delivery, {"ok": 1}, 60)
    else:
        assert await layer.dead_letter(delivery, "boom", "ValueError", "bad", 60)


@pytest.mark.parametrize("how", ["ack", "dead", "cancel"])
async def test_result_waiters_are_woken_by_the_end_not_by_polling(
    redis_layer: RedisChannelLayer, redis_server: RedisServer, how: str
) -> None:
    """Async and sync waiters return within milliseconds of the end, idle meanwhile."""
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    waiters = [
        asyncio.create_task(redis_layer.wait_record(record.id, 10)),
        asyncio.create_task(redis_layer.wait_record(record.id, 10)),
        asyncio.create_task(asyncio.to_thread(redis_layer.wait_record_sync, record.id, 10)),
    ]
    await asyncio.sleep(0.2)
    before = commands_processed(redis_server)
    await asyncio.sleep(0.5)
    # Polling from 0.5 ms would run dozens of reads here; blocked waiters run none.
    assert commands_processed(redis_server) - before <= 3
    assert not any(waiter.done() for waiter in waiters)
    ended = asyncio.get_running_loop().time()
    await end_job(redis_layer, how, record.id)
    found = await asyncio.wait_for(asyncio.gather(*waiters), 2)
    # Woken by the end, not at the end of a 1 s blocking chunk (room for a loaded machine).
    assert asyncio.get_running_loop().time() - ended < 0.6
    expected = {"ack": JobStatus.SUCCEEDED, "dead": JobStatus.FAILED, "cancel": JobStatus.CANCELLED}
    assert [r.status if r else None for r in found] == [expected[how]] * 3


async def test_result_wait_times_out_with_the_record_as_it_is(
    redis_layer: RedisChannelLayer,
) -> None:
    """A job still queued at the timeout comes back queued, after about the timeout."""
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    loop = asyncio.get_running_loop()
    began = loop.time()
    found = await redis_layer.wait_record(record.id, 0.3)
    assert 0.29 <= loop.time() - began < 1.0
    assert found is not None
    assert found.status is JobStatus.QUEUED
    began = loop.time()
    found = await asyncio.to_thread(redis_layer.wait_record_sync, record.id, 0.3)
    assert 0.29 <= loop.time() - began < 1.0
    assert found is not None
    assert found.status is JobStatus.QUEUED


async def test_result_wait_outlasts_its_blocking_chunks(redis_layer: RedisChannelLayer) -> None:
    """A waiter blocked across several chunks (no timeout) still wakes at the end."""
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    waiting = asyncio.create_task(redis_layer.wait_record(record.id, None))
    await asyncio.sleep(2.3)
    assert not waiting.done()
    await end_job(redis_layer, "ack", record.id)
    found = await asyncio.wait_for(waiting, 1)
    assert found is not None
    assert found.result == {"ok": 1}


async def test_result_wait_for_an_unknown_job_is_none_at_once(
    redis_layer: RedisChannelLayer,
) -> None:
    """No record, no waiting: None straight away, sync and async."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await redis_layer.wait_record("no-such-job", 5) is None
    assert await asyncio.to_thread(redis_layer.wait_record_sync, "no-such-job", 5) is None
    assert loop.time() - began < 0.5


async def test_a_stale_wake_token_does_not_end_a_requeued_wait(
    redis_layer: RedisChannelLayer,
) -> None:
    """After a watched job dies and is requeued, a new waiter blocks until its new end."""
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    first = asyncio.create_task(redis_layer.wait_record(record.id, 5))
    await asyncio.sleep(0.1)
    await end_job(redis_layer, "dead", record.id)
    found = await asyncio.wait_for(first, 2)
    assert found is not None
    assert found.status is JobStatus.FAILED
    assert await redis_layer.requeue_dead("q") == 1
    again = asyncio.create_task(redis_layer.wait_record(record.id, 5))
    await asyncio.sleep(0.3)
    assert not again.done()
    await end_job(redis_layer, "ack", record.id)
    found = await asyncio.wait_for(again, 2)
    assert found is not None
    assert found.status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("backend", ["redis"])
@pytest.mark.django_db(transaction=True)
async def test_a_worker_never_holds_more_leases_than_its_concurrency(
    layer_settings: dict[str, Any], redis_server: RedisServer
) -> None:
    """Slots are freed as acks leave, yet Redis never holds more than `concurrency` leases.

    The next claim is pipelined behind the acks on one connection, so Redis
    settles them first; a claim overtaking an ack would show here as a 5th lease.
    """
    prefix = layer_settings["default"]["CONFIG"]["prefix"]
    lease_key = f"{{{prefix}:math}}:lease"
    jobs = [await Add(a=i, b=1).asend() for i in range(600)]
    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most
        client = redis.Redis(port=redis_server.port)
        try:
            while not stop.is_set():
                most = max(most, int(client.zcard(lease_key)))
        finally:
            client.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        async with running_worker(["math"], concurrency=4):
            for handle in jobs[::50] + jobs[-1:]:
                await handle.aresult(timeout=20)
    finally:
        stop.set()
        sampler.join()
    assert 1 <= most <= 4


async def test_wake_tokens_are_pushed_as_a_channel_fills_and_passed_on(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """The send that makes a channel non-empty leaves a token, the others none; a take
    that leaves messages passes one on; tokens nobody takes stay at most 64."""
    client = redis.Redis(port=redis_server.port)
    wake = f"{{{redis_layer.prefix}:w}}:wake"
    try:
        for index in range(100):
            await redis_layer.send("w", {"type": "t", "i": index})
        assert client.llen(wake) == 1
        client.delete(wake)  # as if a blocked receiver had taken it
        assert (await receive(redis_layer, "w"))["i"] == 0
        assert client.llen(wake) == 1  # 99 still ready: the next receiver is woken
        for index in range(1, 100):
            assert (await receive(redis_layer, "w"))["i"] == index
        assert client.llen(wake) == 0  # nothing ready, no stale wake-ups
        for _ in range(70):  # each cancel empties the channel behind the take's back
            message, record = job("w")
            await redis_layer.enqueue("w", message, record)
            assert await redis_layer.cancel(record.id)
        assert client.llen(wake) == 64
    finally:
        client.close()


def script_calls(server: RedisServer) -> int:
    """EVALSHA calls the server has run so far (INFO commandstats)."""
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        client.close()


async def test_settles_of_one_loop_turn_share_one_script_call(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """Acks and a dead letter made together are one EVALSHA; each gets its own answer."""
    records = []
    for _ in range(5):
        message, record = job("q")
        await redis_layer.enqueue("q", message, record)
        records.append(record)
    deliveries = await redis_layer.claim(["q"], 5, 30, 0)
    assert len(deliveries) == 5
    stale = deliveries[1]
    stale.token = "999"  # a lease this worker does not hold: refused, the others not
    await redis_layer.get_record(records[0].id)  # the connection is open and idle
    before = script_calls(redis_server)
    outcomes = await asyncio.gather(
        *(redis_layer.ack(d, {"n": i}, 60) for i, d in enumerate(deliveries[:4])),
        redis_layer.dead_letter(deliveries[4], "boom", "ValueError", "bad", 60),
    )
    # The first settle is written at once (nothing else waited); the other
    # four leave together at the end of the loop turn.
    assert script_calls(redis_server) - before == 2
    assert outcomes == [True, False, True, True, True]
    found = [await redis_layer.get_record(str(d.job_id)) for d in deliveries]
    assert [(r.status, r.result) for r in found if r is not None] == [
        (JobStatus.SUCCEEDED, {"n": 0}),
        (JobStatus.RUNNING, None),
        (JobStatus.SUCCEEDED, {"n": 2}),
        (JobStatus.SUCCEEDED, {"n": 3}),
        (JobStatus.FAILED, None),
    ]


async def test_sends_made_at_once_reach_redis_in_one_write(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """Concurrent sends (an ASGI server's requests in flight) share the connection's
    write at the end of the loop turn: Redis reads them in a few chunks, not one a send."""
    admin = redis.Redis.from_url(redis_server.url)
    try:
        message, record = job("q")
        await redis_layer.enqueue("q", message, record)  # connection open, scripts loaded
        batch = [job("q") for _ in range(100)]
        before = int(admin.info("stats")["total_reads_processed"])
        await asyncio.gather(*(redis_layer.enqueue("q", m, r) for m, r in batch))
        reads = int(admin.info("stats")["total_reads_processed"]) - before
        # The first is written at once (nothing waited), the other 99 together, which
        # Redis takes in a read or a few (3 in all here, the INFO above included);
        # one write a send would be 101 (80 seen, some coalesced in the socket).
        assert reads <= 10
        assert await redis_layer.pending("q") == 101
        records = [await redis_layer.get_record(r.id) for _, r in batch]
        assert [r.status for r in records if r is not None] == [JobStatus.QUEUED] * 100
    finally:
        admin.close()


async def test_merged_settles_fall_back_to_their_own_calls_when_the_script_is_gone(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """After SCRIPT FLUSH the merged call fails as a whole; each settle then lands alone."""
    for _ in range(3):
        message, record = job("q")
        await redis_layer.enqueue("q", message, record)
    deliveries = await redis_layer.claim(["q"], 3, 30, 0)
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.script_flush()
    finally:
        client.close()
    outcomes = await asyncio.gather(*(redis_layer.ack(d, "ok", 60) for d in deliveries))
    assert outcomes == [True, True, True]
    found = [await redis_layer.get_record(str(d.job_id)) for d in deliveries]
    assert [r.status for r in found if r is not None] == [JobStatus.SUCCEEDED] * 3


async def test_an_idle_claim_blocks_at_once_asking_for_fewer_while_settles_are_in_flight(
    redis_layer: RedisChannelLayer,
) -> None:
    """After a take that left nothing ready, the next claim blocks without a first take.

    It goes on another connection than the settles, so it asks for as many
    fewer messages as settles are still unanswered: Redis counts their leases.
    """
    for _ in range(2):
        message, record = job("q")
        await redis_layer.enqueue("q", message, record)
    first, second = await redis_layer.claim(["q"], 8, 30, 0)  # 2 of 8: nothing left
    for _ in range(3):
        message, record = job("q")
        await redis_layer.enqueue("q", message, record)
    acking = asyncio.create_task(redis_layer.ack(first, "ok", 60))
    await asyncio.sleep(0)  # the ack is written, its answer not yet read
    claimed = await redis_layer.claim(["q"], 2, 30, 1)
    assert len(claimed) == 1  # 2 slots, less the settle in flight
    assert await acking
    assert len(await redis_layer.claim(["q"], 8, 30, 0)) == 2
    assert await redis_layer.ack(second, "ok", 60)


@pytest.mark.parametrize("backend", ["redis"])
@pytest.mark.django_db(transaction=True)
async def test_an_idle_worker_runs_one_take_script_a_job(
    layer_settings: dict[str, Any], redis_server: RedisServer
) -> None:
    """Jobs one at a time: enqueue, take, settle and the result watch are each one EVALSHA.

    An idle worker's claim blocks at once instead of running the take script
    for nothing first (which would make five).
    """
    async with running_worker(["math"]):
        await (await Add(a=0, b=0).asend()).aresult(timeout=10)
        before = script_calls(redis_server)
        for index in range(20):
            assert await (await Add(a=index, b=1).asend()).aresult(timeout=10) == index + 1
        calls = script_calls(redis_server) - before
    assert calls <= 4 * 20 + 2  # a blocking take that timed out may add one


async def test_a_take_cancelled_in_flight_hands_its_message_on(
    redis_layer: RedisChannelLayer,
) -> None:
    """Cancelled after its take was written, a claim releases what Redis leased it,
    and a receive leaves its message to the next receive."""
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    claiming = asyncio.create_task(redis_layer.claim(["q"], 1, 30, 0))
    await asyncio.sleep(0)  # the take is written, its reply not yet read
    claiming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claiming
    [delivery] = await redis_layer.claim(["q"], 1, 30, 2)
    assert delivery.job_id == record.id
    assert delivery.attempt == 1  # released unrun: the attempt does not count

    await redis_layer.send("r", {"type": "t", "n": 1})
    receiving = asyncio.create_task(redis_layer.receive("r"))
    await asyncio.sleep(0)
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    assert (await receive(redis_layer, "r"))["n"] == 1


async def test_send_many_stores_a_chunk_with_one_script_call(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """1,200 jobs are three enqueue scripts (chunks of 500), each job with its own flag."""
    from layerq.layers.redis import ENQUEUE_CHUNK

    batch = [job("q") for _ in range(2 * ENQUEUE_CHUNK + 200)]
    redis_layer.capacity = len(batch) - 3
    await redis_layer.get_record("warm-up")  # the connection is open: no script loads counted
    before = script_calls(redis_server)
    stored = await redis_layer.enqueue_many("q", batch)
    assert script_calls(redis_server) - before == 3
    assert stored == [True] * (len(batch) - 3) + [False] * 3
    assert await redis_layer.pending("q") == len(batch) - 3
    assert await redis_layer.get_record(batch[-1][1].id) is None  # refused: no record
    assert await redis_layer.enqueue_many("q", batch[:2]) == [True, True]  # a retry: kept once
    assert await redis_layer.pending("q") == len(batch) - 3


async def test_send_many_loads_the_script_again_when_redis_lost_it(
    redis_layer: RedisChannelLayer, redis_server: RedisServer
) -> None:
    """After SCRIPT FLUSH, chunks refused with NOSCRIPT run again (async and sync)."""
    from layerq.layers.redis import ENQUEUE_CHUNK

    client = redis.Redis.from_url(redis_server.url)
    size = ENQUEUE_CHUNK + 10  # two chunks: the second written before the first is answered
    try:
        await redis_layer.get_record("open")  # connections open, their scripts loaded
        redis_layer.get_record_sync("open")
        client.script_flush()
        assert await redis_layer.enqueue_many("q", [job("q") for _ in range(size)]) == [True] * size
        client.script_flush()
        assert redis_layer.enqueue_many_sync("q", [job("q") for _ in range(size)]) == [True] * size
        assert await redis_layer.pending("q") == 2 * size
    finally:
        client.close()


async def open_blocking_connection(layer: RedisChannelLayer) -> None:
    """Claim on the empty channel "q" until a block times out: the next claim
    blocks at once, on a connection already open (where deliveries are handed
    over as they are read; a connection still opening hands nothing early)."""
    assert await layer.claim(["q"], 1, 30, 0) == []
    assert await layer.claim(["q"], 1, 30, 0.05) == []


async def test_claim_hands_deliveries_to_started_before_it_returns(
    redis_layer: RedisChannelLayer,
) -> None:
    """A blocked claim's ``started`` gets the deliveries as the reply is read, before
    the claim returns them (the very same objects): a worker's handler starts a loop
    turn sooner."""
    handed: list[Any] = []
    returned_yet = False

    def started(deliveries: list[Any]) -> None:
        assert not returned_yet
        handed.extend(d for d in deliveries if d not in handed)

    await open_blocking_connection(redis_layer)
    waiting = asyncio.create_task(redis_layer.claim(["q"], 4, 30, 5, started))
    await asyncio.sleep(0.1)
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    deliveries = await asyncio.wait_for(waiting, 5)
    returned_yet = True
    assert [d.job_id for d in deliveries] == [record.id]
    assert [id(d) for d in handed] == [id(d) for d in deliveries]


@pytest.mark.parametrize("when", ["within", "after"])
async def test_a_claim_cancelled_after_handing_over_keeps_its_leases(
    redis_layer: RedisChannelLayer, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Deliveries given to ``started`` belong to it, even when the claim is cancelled
    before it returns (from within ``started``, or after it, before the claim
    resumes): they are not released (they run), and their lease holds."""
    await open_blocking_connection(redis_layer)
    handed: list[Any] = []

    def started(deliveries: list[Any]) -> None:
        handed.extend(deliveries)
        # The claim's caller gives up as the reply arrives.
        if when == "within":
            waiting.cancel()
        else:
            asyncio.get_running_loop().call_soon(waiting.cancel)

    waiting = asyncio.create_task(redis_layer.claim(["q"], 1, 30, 5, started))
    await asyncio.sleep(0.1)
    message, record = job("q")
    await redis_layer.enqueue("q", message, record)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    [delivery] = handed
    await asyncio.sleep(0.1)  # what a release would have needed to land
    assert await redis_layer.claim(["q"], 1, 30, 0) == [], "not released"
    assert (await redis_layer.get_record(record.id)).status is JobStatus.RUNNING
    assert await redis_layer.ack(delivery, "ran", 60)
    # ... and the connection read on: its reader did not fail on the cancelled claim.
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
