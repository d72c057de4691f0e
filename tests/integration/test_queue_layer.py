"""The acknowledged-receive extension: leases, outcomes, records, dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import layerq
from layerq import clock
from layerq.conf import get_settings
from layerq.events import Envelope, build_message, new_job_id
from layerq.jobs import JobRecord, JobStatus


async def enqueue(
    layer: Any,
    channel: str = "q",
    delay: float = 0.0,
    max_attempts: int | None = None,
    **fields: Any,
) -> str:
    """Enqueue one job message straight through the layer, as a producer does; its job id."""
    job_id, now = new_job_id(), clock.now()
    envelope = Envelope(id=job_id, enqueued=now, max_attempts=max_attempts)
    message = build_message("q.work", fields, envelope)
    record = JobRecord(
        id=job_id,
        type="q.work",
        channel=channel,
        status=JobStatus.QUEUED,
        max_attempts=max_attempts,
        enqueued_at=now,
    )
    await layer.enqueue(channel, message, record, delay)
    return job_id


def job_message(channel: str = "q") -> tuple[dict[str, Any], JobRecord]:
    """A job's message and queued record, as a producer builds them."""
    job_id, now = new_job_id(), clock.now()
    message = build_message("q.work", {}, Envelope(id=job_id, enqueued=now))
    record = JobRecord(
        id=job_id, type="q.work", channel=channel, status=JobStatus.QUEUED, enqueued_at=now
    )
    return message, record


async def test_a_send_retried_while_its_job_is_stored_stores_nothing_again(layer: Any) -> None:
    """A job sent again with its id (a send retried) while waiting or leased is
    stored once: one delivery, one record, counted once."""
    message, record = job_message()
    await layer.enqueue("q", message, record)
    await layer.enqueue("q", message, record)
    assert await layer.pending("q") == 1
    [delivery] = await layer.claim(["q"], 10, 30, 0)
    await layer.enqueue("q", message, record)  # while leased
    assert await layer.claim(["q"], 10, 30, 0) == []
    assert (await layer.get_record(record.id)).status is JobStatus.RUNNING
    assert await layer.ack(delivery, None, 60)
    assert await layer.pending("q") == 0


async def test_a_send_retried_after_its_job_ended_starts_a_fresh_record(layer: Any) -> None:
    """The ended job's record (with its TTL) does not speak for the message stored
    again, nor do its counts of deliveries and releases."""
    message, record = job_message()
    await layer.enqueue("q", message, record)
    [delivery] = await layer.claim(["q"], 1, 30, 0)
    await layer.release([delivery])
    [delivery] = await layer.claim(["q"], 1, 30, 0)
    assert delivery.attempt == 1
    assert await layer.ack(delivery, "first", 60)
    await layer.enqueue("q", message, record)  # the same id: a send retried late
    found = await layer.get_record(record.id)
    assert found is not None
    assert (found.status, found.result, found.finished_at) == (JobStatus.QUEUED, None, None)
    [delivery] = await layer.claim(["q"], 1, 30, 0)
    assert delivery.attempt == 1
    assert await layer.ack(delivery, "second", 60)
    assert (await layer.get_record(record.id)).result == "second"


async def test_claim_ack_marks_the_record_succeeded(layer: Any) -> None:
    """A claimed then acked job is gone, with its result in a succeeded record."""
    job_id = await enqueue(layer, n=1)
    assert (await layer.get_record(job_id)).status is JobStatus.QUEUED
    [delivery] = await layer.claim(["q"], 10, 30, 1)
    assert delivery.attempt == 1
    assert delivery.job_id == job_id
    assert delivery.message["n"] == 1
    running = await layer.get_record(job_id)
    assert running.status is JobStatus.RUNNING
    assert running.attempt == 1
    assert await layer.ack(delivery, {"ok": [1, 2]}, 60)
    record = await layer.get_record(job_id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.result == {"ok": [1, 2]}
    assert await layer.pending("q") == 0
    assert await layer.claim(["q"], 10, 30, 0) == []


async def test_claim_respects_the_limit_and_order(layer: Any) -> None:
    """claim() returns at most `limit` deliveries, oldest first."""
    for index in range(5):
        await enqueue(layer, n=index)
    first = await layer.claim(["q"], 3, 30, 1)
    second = await layer.claim(["q"], 3, 30, 1)
    assert [d.message["n"] for d in first] == [0, 1, 2]
    assert [d.message["n"] for d in second] == [3, 4]


async def test_claim_waits_for_a_message_sent_meanwhile(layer: Any) -> None:
    """A waiting claim returns soon after a message arrives."""
    waiting = asyncio.create_task(layer.claim(["q"], 1, 30, 5))
    await asyncio.sleep(0.05)
    job_id = await enqueue(layer)
    deliveries = await asyncio.wait_for(waiting, 2)
    assert [d.job_id for d in deliveries] == [job_id]


async def test_claim_with_nothing_ready_returns_empty_after_wait(layer: Any) -> None:
    """An empty channel yields [] once `wait` has passed."""
    assert await layer.claim(["q"], 1, 30, 0.1) == []


async def test_expired_lease_is_reclaimed_with_the_next_attempt(layer: Any) -> None:
    """A delivery nobody settles comes back after its lease, as attempt 2."""
    job_id = await enqueue(layer)
    [first] = await layer.claim(["q"], 1, 0.5, 1)
    assert await layer.claim(["q"], 1, 0.5, 0) == []
    [again] = await layer.claim(["q"], 1, 30, 2)
    assert again.job_id == job_id
    assert again.attempt == 2
    assert again.reclaimed
    assert not await layer.ack(first, "stale", 60), "the old lease must not settle the job"
    assert (await layer.get_record(job_id)).status is JobStatus.RUNNING
    assert await layer.ack(again, "fresh", 60)
    assert (await layer.get_record(job_id)).result == "fresh"


async def test_extend_keeps_a_lease_alive(layer: Any) -> None:
    """A heartbeat pushes the lease end so nobody else gets the job."""
    await enqueue(layer)
    # Three beats of 0.4 s outlast the 1 s lease, so without them it would end.
    [delivery] = await layer.claim(["q"], 1, 1.0, 1)
    for _ in range(3):
        await asyncio.sleep(0.4)
        await layer.extend([delivery], 1.0)
    assert await layer.claim(["q"], 1, 30, 0) == []
    assert await layer.ack(delivery, None, 60)


async def test_retry_returns_the_message_after_its_delay(layer: Any) -> None:
    """retry() hides the message for `delay` and records the error."""
    job_id = await enqueue(layer)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    assert await layer.retry(delivery, 0.5, "ValueError", "bad")
    record = await layer.get_record(job_id)
    assert record.status is JobStatus.RETRYING
    assert (record.error_type, record.error_message) == ("ValueError", "bad")
    assert await layer.claim(["q"], 1, 30, 0) == []
    [again] = await layer.claim(["q"], 1, 30, 2)
    assert again.attempt == 2
    assert not again.reclaimed


async def test_release_gives_the_attempt_back(layer: Any) -> None:
    """A released delivery is ready at once and its attempt is not counted."""
    job_id = await enqueue(layer)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    await layer.release([delivery])
    assert (await layer.get_record(job_id)).status is JobStatus.QUEUED
    [again] = await layer.claim(["q"], 1, 30, 1)
    assert again.attempt == 1


async def test_dead_letter_keeps_the_message_with_its_reason(layer: Any) -> None:
    """A dead-lettered job is failed, listed with its reason, and can be requeued."""
    job_id = await enqueue(layer, n=7)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    assert await layer.dead_letter(delivery, "failed after 1 attempt(s)", "KeyError", "k", 60)
    record = await layer.get_record(job_id)
    assert record.status is JobStatus.FAILED
    assert record.error_type == "KeyError"
    [letter] = await layer.dead_letters("q")
    assert letter.reason == "failed after 1 attempt(s)"
    assert letter.job_id == job_id
    assert letter.message["n"] == 7
    assert await layer.pending("q") == 0
    assert await layer.requeue_dead("q") == 1
    assert await layer.dead_letters("q") == []
    assert (await layer.get_record(job_id)).status is JobStatus.QUEUED
    [again] = await layer.claim(["q"], 1, 30, 1)
    assert again.attempt == 1
    assert again.message["n"] == 7


async def test_get_message_reads_a_job_while_the_layer_holds_it(layer: Any) -> None:
    """get_message() gives the job's message while it waits (delayed too), is leased,
    retried or dead-lettered; None once it succeeded or was cancelled, or for an
    unknown id; get_message_sync() agrees."""

    async def n_of(job_id: str) -> int | None:
        message = await layer.get_message(job_id)
        assert message == await asyncio.to_thread(layer.get_message_sync, job_id)
        return None if message is None else int(message["n"])

    delayed = await enqueue(layer, delay=10, n=1)
    cancelled = await enqueue(layer, delay=10, n=2)
    job_id = await enqueue(layer, n=3)
    assert (await n_of(delayed), await n_of(cancelled), await n_of(job_id)) == (1, 2, 3)
    assert await layer.cancel(cancelled)
    assert await n_of(cancelled) is None
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    assert await n_of(job_id) == 3  # leased
    assert await layer.retry(delivery, 0, "KeyError", "k")
    assert await n_of(job_id) == 3  # waiting for its next attempt
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    assert await layer.dead_letter(delivery, "failed", "KeyError", "k", 60)
    assert await n_of(job_id) == 3  # dead-lettered
    assert await layer.requeue_dead("q") == 1
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    assert await layer.ack(delivery, "done", 60)
    assert await n_of(job_id) is None
    assert await n_of(new_job_id()) is None


async def test_delayed_message_is_not_claimed_before_its_time(layer: Any) -> None:
    """A message enqueued with a delay waits that long."""
    await enqueue(layer, delay=0.4)
    assert await layer.claim(["q"], 1, 30, 0.1) == []
    assert len(await layer.claim(["q"], 1, 30, 2)) == 1


async def test_cancel_removes_a_waiting_job_only(layer: Any) -> None:
    """cancel() removes a queued job but not one a worker holds."""
    waiting = await enqueue(layer, delay=10)
    held = await enqueue(layer)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    assert delivery.job_id == held
    assert await layer.cancel(waiting)
    assert not await layer.cancel(held)
    assert (await layer.get_record(waiting)).status is JobStatus.CANCELLED
    assert (await layer.get_record(held)).status is JobStatus.RUNNING


async def test_a_record_keeps_what_its_send_wrote_in_every_state(layer: Any) -> None:
    """Id, type, channel, enqueue time and max attempts read the same while a job
    waits, runs, retries or is released, and once it succeeded, failed or was cancelled."""

    async def check(job_id: str, status: JobStatus) -> None:
        record = await layer.get_record(job_id)
        assert record.status is status
        fixed = (record.id, record.type, record.channel, record.max_attempts)
        assert fixed == (job_id, "q.work", "q", 4)
        assert record.enqueued_at is not None
        assert abs(record.enqueued_at - clock.now()) < 5
        assert record.enqueued_at == enqueued.setdefault(job_id, record.enqueued_at)

    def meddle(delivery: Any) -> None:
        # A handler may change the message it is given; the record must not follow.
        delivery.message["type"] = "changed"
        delivery.message["layerq"]["enqueued"] = 0.0
        delivery.message["layerq"]["max_attempts"] = 99

    enqueued: dict[str, float] = {}
    done = await enqueue(layer, max_attempts=4)
    await check(done, JobStatus.QUEUED)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    await check(done, JobStatus.RUNNING)
    assert await layer.retry(delivery, 0, "OSError", "again")
    await check(done, JobStatus.RETRYING)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    meddle(delivery)
    assert await layer.ack(delivery, "ok", 60)
    await check(done, JobStatus.SUCCEEDED)

    dead = await enqueue(layer, max_attempts=4)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    await layer.release([delivery])
    await check(dead, JobStatus.QUEUED)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    meddle(delivery)
    assert await layer.dead_letter(delivery, "gave up", "KeyError", "k", 60)
    await check(dead, JobStatus.FAILED)

    # bytes among the fields: msgpack's bin type, which Lua's cmsgpack cannot read
    cancelled = await enqueue(layer, delay=10, max_attempts=4, blob=b"\x00\xff")
    await check(cancelled, JobStatus.QUEUED)
    assert await layer.cancel(cancelled)
    await check(cancelled, JobStatus.CANCELLED)


#: a message holding every msgpack form a Channels message can (bytes are msgpack's
#: bin type, which Redis's Lua cmsgpack cannot read), all before the envelope
EVERY_FORM: dict[str, Any] = {
    "bin": [b"", b"\x00\xff", bytes(300), bytes(70_000)],
    "str": ["", "é" * 20, "x" * 40, "y" * 300, "z" * 70_000],
    "uints": [0, 127, 128, 255, 256, 65_535, 65_536, 2**32, 2**64 - 1],
    "ints": [-1, -32, -33, -128, -129, -32_768, -32_769, -(2**31), -(2**31) - 1, -(2**63)],
    "floats": [0.5, -1.25, 1e300, 5e-324],
    "constants": [True, False, None],
    "array16": list(range(20)),
    "array32": [0] * 70_000,
    "map16": {f"k{index}": index for index in range(20)},
    "nested": {"a": [{"b": [1, {"c": b"d"}]}], "layerq": {"id": "not the envelope"}},
    "lookalike": {"type": "not the type", "__asgi_channel__": "not the channel"},
}


@pytest.mark.parametrize("end", ["ack", "dead_letter", "cancel"])
@pytest.mark.parametrize("attempts", [3, 70_000, -300])  # three msgpack integer forms
async def test_an_ended_record_keeps_its_fields_whatever_the_message_holds(
    layer: Any, end: str, attempts: int
) -> None:
    """The fields a record reads from its message while the job waits are the ones
    it keeps once the job ends (Redis: a settle writes them, sent as one msgpack
    array, which Lua can read whatever the message holds)."""
    job_id = await enqueue(layer, max_attempts=attempts, **EVERY_FORM)
    waiting = await layer.get_record(job_id)
    fixed = (waiting.id, waiting.type, waiting.channel, waiting.max_attempts)
    assert fixed == (job_id, "q.work", "q", attempts)
    if end == "cancel":
        assert await layer.cancel(job_id)
    else:
        [delivery] = await layer.claim(["q"], 1, 30, 1)
        assert delivery.message["bin"][3] == bytes(70_000)
        if end == "ack":
            assert await layer.ack(delivery, None, 60)
        else:
            assert await layer.dead_letter(delivery, "gave up", "KeyError", "k", 60)
    ended = await layer.get_record(job_id)
    assert ended.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    assert (ended.id, ended.type, ended.channel, ended.max_attempts) == fixed
    assert ended.enqueued_at == waiting.enqueued_at


async def test_a_claim_marks_running_only_the_jobs_that_start_now(layer: Any) -> None:
    """claim(running=n): the first n records say running; the others (a worker's
    prefetch) are leased but say what they said, until start() marks them."""
    ids = [await enqueue(layer) for _ in range(3)]
    deliveries = await layer.claim(["q"], 3, 30, 1, running=1)
    assert [d.job_id for d in deliveries] == ids
    assert [d.marked_running for d in deliveries] == [True, False, False]
    records = [await layer.get_record(job_id) for job_id in ids]
    assert [(r.status, r.attempt) for r in records] == [
        (JobStatus.RUNNING, 1),
        (JobStatus.QUEUED, 0),
        (JobStatus.QUEUED, 0),
    ]
    assert records[1].started_at is None
    assert await layer.start(deliveries[1])
    started = await layer.get_record(ids[1])
    assert (started.status, started.attempt) == (JobStatus.RUNNING, 1)
    assert started.started_at is not None
    assert await layer.ack(deliveries[1], "done", 60)
    assert not await layer.start(deliveries[1])  # ended: the start changes nothing
    assert (await layer.get_record(ids[1])).status is JobStatus.SUCCEEDED
    await layer.release([deliveries[2]])
    assert not await layer.start(deliveries[2])  # released: not ours any more
    assert (await layer.get_record(ids[2])).status is JobStatus.QUEUED


async def test_a_retried_job_prefetched_says_retrying_until_it_starts(layer: Any) -> None:
    """A prefetched job on its second attempt keeps its retrying record (error
    included) until start() says it runs again, with the new attempt."""
    job_id = await enqueue(layer)
    [delivery] = await layer.claim(["q"], 1, 30, 1)
    assert await layer.retry(delivery, 0, "OSError", "again")
    [delivery] = await layer.claim(["q"], 1, 30, 1, running=0)
    assert (delivery.attempt, delivery.marked_running) == (2, False)
    waiting = await layer.get_record(job_id)
    assert (waiting.status, waiting.attempt, waiting.error_type) == (
        JobStatus.RETRYING,
        1,
        "OSError",
    )
    assert await layer.start(delivery)
    running = await layer.get_record(job_id)
    assert (running.status, running.attempt) == (JobStatus.RUNNING, 2)
    assert await layer.ack(delivery, None, 60)
    assert (await layer.get_record(job_id)).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("end", ["ack", "dead_letter", "cancel"])
async def test_finished_records_expire_after_their_ttl(layer: Any, end: str) -> None:
    """An ended record (succeeded, failed or cancelled) is kept for its TTL, on
    layerq's clock, and is gone once it has passed."""
    job_id = await enqueue(layer)
    ttl = 5.0
    if end == "cancel":
        assert await layer.cancel(job_id)
        ttl = get_settings().result_ttl  # a cancel's record is kept as results are
    else:
        [delivery] = await layer.claim(["q"], 1, 30, 1)
        if end == "ack":
            assert await layer.ack(delivery, 1, 5)
        else:
            assert await layer.dead_letter(delivery, "boom", "ValueError", "bad", 5)
    now = clock.now()
    try:
        clock.set_clock(lambda: now + ttl - 1)
        assert await layer.get_record(job_id) is not None
        clock.set_clock(lambda: now + ttl + 1)
        assert await layer.get_record(job_id) is None
    finally:
        clock.set_clock(None)


async def test_job_messages_do_not_expire_like_plain_ones(layer: Any) -> None:
    """A job message outlives the layer's plain-message expiry."""
    layer.expiry = 1
    job_id = await enqueue(layer)
    now = clock.now()
    clock.set_clock(lambda: now + 3600)
    try:
        [delivery] = await layer.claim(["q"], 1, 30, 1)
    finally:
        clock.set_clock(None)
    assert delivery.job_id == job_id


async def test_enqueue_at_capacity_raises_queue_full(layer: Any) -> None:
    """enqueue() refuses past capacity and stores no record for the refused job."""
    layer.capacity = 1
    await enqueue(layer)
    with pytest.raises(layerq.QueueFull):
        await enqueue(layer)
    assert await layer.pending("q") == 1


async def test_progress_is_stored_on_the_record(layer: Any) -> None:
    """set_progress() is visible in the record."""
    job_id = await enqueue(layer)
    await layer.claim(["q"], 1, 30, 1)
    await layer.set_progress(job_id, 0.25, "a quarter")
    record = await layer.get_record(job_id)
    assert (record.progress, record.progress_message) == (0.25, "a quarter")


def test_sync_enqueue_and_record_need_no_event_loop(layer_settings: Any) -> None:
    """enqueue_sync/get_record_sync work from plain sync code."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    job_id = new_job_id()
    message = build_message("q.work", {}, Envelope(id=job_id, enqueued=clock.now()))
    record = JobRecord(id=job_id, type="q.work", channel="q", status=JobStatus.QUEUED)
    layer.enqueue_sync("q", message, record)
    assert layer.get_record_sync(job_id).status is JobStatus.QUEUED
    assert layer.cancel_sync(job_id)
    assert layer.get_record_sync(job_id).status is JobStatus.CANCELLED


async def test_claim_serves_several_channels(layer: Any) -> None:
    """One claim over two channels gets the messages of both, within the limit."""
    await enqueue(layer, "a")
    await enqueue(layer, "b")
    await enqueue(layer, "b")
    deliveries = await layer.claim(["a", "b"], 10, 30, 0)
    assert sorted(d.channel for d in deliveries) == ["a", "b", "b"]
    assert await layer.claim(["a", "b"], 10, 30, 0) == []


async def test_pending_counts_ready_delayed_and_leased(layer: Any) -> None:
    """pending() counts everything stored for the channel until it is settled."""
    await enqueue(layer)
    await enqueue(layer)
    await enqueue(layer, delay=60)
    [delivery] = await layer.claim(["q"], 1, 30, 0)
    assert await layer.pending("q") == 3
    await layer.ack(delivery, None, 60)
    assert await layer.pending("q") == 2


async def test_plain_message_reaches_claim_to_be_dead_lettered(layer: Any) -> None:
    """A message sent without an envelope is claimed (no job id) so it can be recorded."""
    await layer.send("q", {"type": "legacy"})
    [delivery] = await layer.claim(["q"], 1, 30, 0)
    assert (delivery.job_id, delivery.message) == (None, {"type": "legacy"})
    assert await layer.dead_letter(delivery, "no envelope", "InvalidEvent", "x", 60)
    [letter] = await layer.dead_letters("q")
    assert (letter.reason, letter.message) == ("no envelope", {"type": "legacy"})


async def test_waiting_claim_wakes_on_an_enqueue(layer: Any) -> None:
    """A claim blocked on an empty channel returns soon after an enqueue: woken by it,
    not at the end of its blocking chunk (1 s on Redis). The bound leaves a loaded
    machine room; speed itself is measured in bench/."""
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(layer.claim(["q"], 1, 30, 5))
    await asyncio.sleep(0.2)
    started = loop.time()
    job_id = await enqueue(layer)
    [delivery] = await asyncio.wait_for(waiting, 2)
    assert delivery.job_id == job_id
    assert loop.time() - started < 0.5
