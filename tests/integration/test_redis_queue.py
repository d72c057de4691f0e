"""RedisChannelLayer as a queue: leases, outcomes, records and dead letters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from layerq import clock
from layerq.errors import QueueFull
from layerq.events import Envelope, build_message, new_job_id
from layerq.jobs import JobRecord, JobStatus
from layerq.layers.redis import RedisChannelLayer
from layerq.testing import RedisServer

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
    layer = RedisChannelLayer(hosts=[_redis_server.url], prefix=f"q{abs(hash(request.node.name))}")
    yield layer
    clock.set_clock(None)
    await layer.flush()
    await layer.close()


def later(seconds: float) -> None:
    """Move layerq's clock ``seconds`` ahead of now."""
    clock.set_clock(lambda: time.time() + seconds)


async def enqueue(
    layer: RedisChannelLayer, channel: str = "q", delay: float = 0.0, **fields: Any
) -> str:
    """Enqueue one job; its id."""
    job_id = new_job_id()
    message = build_message("q.work", fields, Envelope(id=job_id, enqueued=clock.now()))
    record = JobRecord(id=job_id, type="q.work", channel=channel, status=JobStatus.QUEUED,
                       enqueued_at=clock.now())  # fmt: skip
    await layer.enqueue(channel, message, record, delay)
    return job_id


async def status(layer: RedisChannelLayer, job_id: str) -> JobStatus | None:
    record = await layer.get_record(job_id)
    return None if record is None else record.status


async def test_claimed_then_acked_job_has_a_succeeded_record(
    redis_layer: RedisChannelLayer,
) -> None:
    """enqueue -> claim -> ack leaves no message and a succeeded record with the result."""
    job_id = await enqueue(redis_layer, n=1)
    assert await status(redis_layer, job_id) is JobStatus.QUEUED
    [delivery] = await redis_layer.claim(["q"], 10, 30, 1)
    assert (delivery.job_id, delivery.attempt, delivery.reclaimed) == (job_id, 1, False)
    assert delivery.message["n"] == 1
    running = await redis_layer.get_record(job_id)
    assert running is not None
    assert (running.status, running.attempt) == (JobStatus.RUNNING, 1)
    assert running.started_at is not None
    assert await redis_layer.ack(delivery, {"ok": [1, b"2"]}, 60)
    done = await redis_layer.get_record(job_id)
    assert done is not None
    assert (done.status, done.result, done.progress) == (
        JobStatus.SUCCEEDED,
        {"ok": [1, b"2"]},
        1.0,
    )
    assert await redis_layer.pending("q") == 0


async def test_claim_takes_a_batch_in_order(redis_layer: RedisChannelLayer) -> None:
    """claim() returns at most `limit` deliveries, oldest first, in one call."""
    for index in range(7):
        await enqueue(redis_layer, n=index)
    first = await redis_layer.claim(["q"], 5, 30, 0)
    second = await redis_layer.claim(["q"], 5, 30, 0)
    assert [d.message["n"] for d in first] == [0, 1, 2, 3, 4]
    assert [d.message["n"] for d in second] == [5, 6]


async def test_claim_serves_several_channels(redis_layer: RedisChannelLayer) -> None:
    """One claim over two channels gets the messages of both, within the limit."""
    await enqueue(redis_layer, "a")
    await enqueue(redis_layer, "b")
    await enqueue(redis_layer, "b")
    deliveries = await redis_layer.claim(["a", "b"], 10, 30, 0)
    assert sorted(d.channel for d in deliveries) == ["a", "b", "b"]
    assert len(await redis_layer.claim(["a", "b"], 10, 30, 0)) == 0


async def test_waiting_claim_wakes_within_milliseconds(redis_layer: RedisChannelLayer) -> None:
    """A claim blocked on an empty channel returns soon after an enqueue."""
    waiting = asyncio.create_task(redis_layer.claim(["q"], 1, 30, 5))
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    job_id = await enqueue(redis_layer)
    [delivery] = await asyncio.wait_for(waiting, 2)
    assert delivery.job_id == job_id
    assert time.perf_counter() - started < 0.05


async def test_retry_brings_the_job_back_after_its_delay(redis_layer: RedisChannelLayer) -> None:
    """retry(delay) records the error and keeps the job out of reach until then."""
    job_id = await enqueue(redis_layer)
    [first] = await redis_layer.claim(["q"], 1, 30, 0)
    assert await redis_layer.retry(first, 10, "ValueError", "boom")
    record = await redis_layer.get_record(job_id)
    assert record is not None
    assert (record.status, record.error_type, record.error_message) == (
        JobStatus.RETRYING, "ValueError", "boom"
    )  # fmt: skip
    assert await redis_layer.claim(["q"], 1, 30, 0) == []
    later(11)
    [second] = await redis_layer.claim(["q"], 1, 30, 0)
    assert (second.job_id, second.attempt, second.reclaimed) == (job_id, 2, False)


async def test_expired_lease_is_reclaimed_and_the_old_token_is_stale(
    redis_layer: RedisChannelLayer,
) -> None:
    """After its lease, a job comes back as attempt 2, and the first lease settles nothing."""
    job_id = await enqueue(redis_layer)
    [first] = await redis_layer.claim(["q"], 1, 5, 0)
    later(6)
    [second] = await redis_layer.claim(["q"], 1, 30, 0)
    assert (second.job_id, second.attempt, second.reclaimed) == (job_id, 2, True)
    assert not await redis_layer.ack(first, "stale", 60)
    assert not await redis_layer.retry(first, 0, "E", "stale")
    assert not await redis_layer.dead_letter(first, "stale", "E", "stale", 60)
    assert await status(redis_layer, job_id) is JobStatus.RUNNING
    assert await redis_layer.ack(second, "fresh", 60)
    record = await redis_layer.get_record(job_id)
    assert record is not None
    assert record.result == "fresh"


async def test_extend_keeps_the_lease(redis_layer: RedisChannelLayer) -> None:
    """A heartbeat pushes the lease out, so nobody reclaims the job."""
    await enqueue(redis_layer)
    [delivery] = await redis_layer.claim(["q"], 1, 5, 0)
    later(4)
    await redis_layer.extend([delivery], 5)
    later(8)
    assert await redis_layer.claim(["q"], 1, 5, 0) == []
    assert await redis_layer.ack(delivery, None, 60)


async def test_release_does_not_count_the_attempt(redis_layer: RedisChannelLayer) -> None:
    """A released job comes back first, with the same attempt number."""
    job_id = await enqueue(redis_layer, n=0)
    await enqueue(redis_layer, n=1)
    [held, _other] = await redis_layer.claim(["q"], 2, 30, 0)
    await redis_layer.release([held])
    assert await status(redis_layer, job_id) is JobStatus.QUEUED
    [again] = await redis_layer.claim(["q"], 1, 30, 0)
    assert (again.job_id, again.attempt) == (job_id, 1)
    assert not await redis_layer.ack(held, None, 60)


async def test_dead_letters_are_kept_listed_and_requeued(redis_layer: RedisChannelLayer) -> None:
    """dead_letter keeps the message with its reason; requeue_dead restarts it at attempt 1."""
    job_id = await enqueue(redis_layer, n=5)
    other = await enqueue(redis_layer, n=6)
    for _ in range(2):
        [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
        assert await redis_layer.retry(delivery, 0, "E", "again")
        [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
        await redis_layer.release([delivery])
    deliveries = await redis_layer.claim(["q"], 2, 30, 0)
    for delivery in deliveries:
        assert await redis_layer.dead_letter(delivery, "gave up", "E", "final", 60)
    failed = await redis_layer.get_record(job_id)
    assert failed is not None
    assert (failed.status, failed.error_message) == (JobStatus.FAILED, "final")
    letters = await redis_layer.dead_letters("q")
    assert [(d.job_id, d.reason, d.message and d.message["n"]) for d in letters] == [
        (job_id, "gave up", 5), (other, "gave up", 6)
    ]  # fmt: skip
    assert await redis_layer.pending("q") == 0
    assert await redis_layer.requeue_dead("q", [job_id]) == 1
    assert await status(redis_layer, job_id) is JobStatus.QUEUED
    [again] = await redis_layer.claim(["q"], 1, 30, 0)
    assert (again.job_id, again.attempt) == (job_id, 1)
    assert await redis_layer.requeue_dead("q") == 1
    assert await redis_layer.dead_letters("q") == []


async def test_delayed_enqueue_waits_for_its_time(redis_layer: RedisChannelLayer) -> None:
    """A job enqueued with a delay is pending but not claimable until it is due."""
    job_id = await enqueue(redis_layer, delay=30)
    assert await redis_layer.pending("q") == 1
    assert await redis_layer.claim(["q"], 1, 30, 0.2) == []
    later(31)
    [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
    assert delivery.job_id == job_id


async def test_cancel_removes_waiting_jobs_only(redis_layer: RedisChannelLayer) -> None:
    """cancel() takes out queued or delayed jobs, not leased ones, nor unknown ids."""
    running, queued, delayed = (await enqueue(redis_layer), await enqueue(redis_layer),
                                await enqueue(redis_layer, delay=60))  # fmt: skip
    [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
    assert delivery.job_id == running
    assert not await redis_layer.cancel(running)
    assert await redis_layer.cancel(queued)
    assert await redis_layer.cancel(delayed)
    assert not await redis_layer.cancel("no-such-job")
    assert await status(redis_layer, queued) is JobStatus.CANCELLED
    assert await redis_layer.pending("q") == 1


async def test_pending_counts_ready_delayed_and_leased(redis_layer: RedisChannelLayer) -> None:
    """pending() is everything stored for the channel until it is settled."""
    await enqueue(redis_layer)
    await enqueue(redis_layer)
    await enqueue(redis_layer, delay=60)
    [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
    assert await redis_layer.pending("q") == 3
    await redis_layer.ack(delivery, None, 60)
    assert await redis_layer.pending("q") == 2


async def test_finished_records_expire_in_redis(
    redis_layer: RedisChannelLayer, _redis_server: RedisServer
) -> None:
    """A settled record (and its locator) is removed by Redis after its ttl."""
    job_id = await enqueue(redis_layer)
    [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
    await redis_layer.ack(delivery, 1, 0.2)
    assert await status(redis_layer, job_id) is JobStatus.SUCCEEDED
    await asyncio.sleep(0.4)
    fresh = RedisChannelLayer(hosts=[_redis_server.url], prefix=redis_layer.prefix)
    try:
        assert await fresh.get_record(job_id) is None
        assert await redis_layer.get_record(job_id) is None
    finally:
        await fresh.close()


async def test_job_messages_never_expire(redis_layer: RedisChannelLayer) -> None:
    """A job message outlives `expiry`, unlike a plain message."""
    redis_layer.expiry = 5
    job_id = await enqueue(redis_layer)
    await redis_layer.send("q", {"type": "plain"})
    later(3600)
    deliveries = await redis_layer.claim(["q"], 10, 30, 0)
    assert [d.job_id for d in deliveries] == [job_id]


async def test_enqueue_at_capacity_raises_and_leaves_no_record(
    redis_layer: RedisChannelLayer,
) -> None:
    """QueueFull at capacity; the refused job has no record."""
    redis_layer.capacity = 1
    await enqueue(redis_layer)
    job_id = new_job_id()
    message = build_message("q.work", {}, Envelope(id=job_id, enqueued=clock.now()))
    record = JobRecord(id=job_id, type="q.work", channel="q", status=JobStatus.QUEUED)
    with pytest.raises(QueueFull):
        await redis_layer.enqueue("q", message, record)
    assert await redis_layer.get_record(job_id) is None


async def test_progress_is_stored_on_the_record(redis_layer: RedisChannelLayer) -> None:
    """set_progress stores fraction and message on a running job's record."""
    job_id = await enqueue(redis_layer)
    await redis_layer.claim(["q"], 1, 30, 0)
    await redis_layer.set_progress(job_id, 0.25, "a quarter")
    record = await redis_layer.get_record(job_id)
    assert record is not None
    assert (record.progress, record.progress_message) == (0.25, "a quarter")
    await redis_layer.set_progress("unknown", 0.5, None)  # no record: ignored


async def test_plain_message_is_delivered_to_claim_for_dead_lettering(
    redis_layer: RedisChannelLayer,
) -> None:
    """A message sent without an envelope reaches claim() with no job id."""
    await redis_layer.send("q", {"type": "legacy"})
    [delivery] = await redis_layer.claim(["q"], 1, 30, 0)
    assert (delivery.job_id, delivery.message) == (None, {"type": "legacy"})
    assert await redis_layer.dead_letter(delivery, "no envelope", "InvalidEvent", "x", 60)
    [letter] = await redis_layer.dead_letters("q")
    assert (letter.reason, letter.message) == ("no envelope", {"type": "legacy"})


async def test_claim_during_an_outage_recovers_within_its_wait() -> None:
    """A claim spanning a Redis restart returns the job enqueued after it."""
    with RedisServer() as server:
        layer = RedisChannelLayer(hosts=[server.url], prefix="outage")
        try:
            await layer.claim(["q"], 1, 30, 0)
            server.stop()
            waiting = asyncio.create_task(layer.claim(["q"], 1, 30, 8))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)
            job_id = await enqueue(layer)
            [delivery] = await asyncio.wait_for(waiting, 10)
            assert delivery.job_id == job_id
        finally:
            await layer.close()
