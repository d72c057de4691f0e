"""Jobs end to end in one process: send, run, result, retry, dead-letter, notify."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import override_settings

import layerq
from layerq.jobs import JobStatus
from layerq.runtime import Worker
from tests.app.asgi import application
from tests.app.events import Add, Again, Fail, Flaky, Multiply, Sleep, Steps, SyncAdd, SyncSleep
from tests.conftest import running_worker


async def test_async_handler_result_reaches_the_producer(layer: Any) -> None:
    """An event sent with asend() runs and its return value is the result."""
    job = await Add(a=2, b=3).asend()
    assert await job.astatus() is JobStatus.QUEUED
    async with running_worker(["math"]):
        assert await job.aresult(timeout=10) == 5
    assert await job.astatus() is JobStatus.SUCCEEDED


async def test_sync_handler_runs_in_a_thread_and_reports_progress(layer: Any) -> None:
    """A WorkerConsumer handler runs, its progress() reaches the job's groups, and its
    result the producer."""
    listener = await layer.new_channel()
    await layer.group_add("layerq.user.8", listener)
    job = await SyncAdd(a=4, b=5).asend(notify=layerq.user_group(8))
    async with running_worker(["sync"]):
        assert await job.aresult(timeout=10) == 9
        events = [await asyncio.wait_for(layer.receive(listener), 5) for _ in range(3)]
    assert [event["type"] for event in events] == [
        "layerq.job.started",
        "layerq.job.progress",
        "layerq.job.succeeded",
    ]
    assert (events[1]["job"]["progress"], events[1]["job"]["message"]) == (0.5, "halfway")
    assert (await job.arecord()).progress == 1.0


async def test_dict_events_and_dict_handlers_work(layer: Any) -> None:
    """layerq.asend() takes an untyped dict; a dict-annotated handler gets the message."""
    job = await layerq.asend("math", {"type": "math.raw", "value": 12})
    async with running_worker(["math"]):
        assert await job.aresult(timeout=10) == "12"


async def test_failing_job_is_retried_then_dead_lettered(layer: Any) -> None:
    """A handler that always raises runs max_attempts times, then fails with its error."""
    job = await Fail(message="nope").asend(max_attempts=3)
    async with running_worker(["math"]):
        with pytest.raises(layerq.JobFailed) as failed:
            await job.aresult(timeout=10)
    assert failed.value.error_type == "ValueError"
    assert failed.value.error_message == "nope"
    record = await job.arecord()
    assert (record.status, record.attempt) == (JobStatus.FAILED, 3)
    [letter] = await layer.dead_letters("math")
    assert letter.job_id == job.id
    assert "ValueError: nope" in letter.reason


async def test_flaky_job_succeeds_on_a_later_attempt(layer: Any) -> None:
    """A job that fails twice then succeeds ends succeeded on attempt 3."""
    job = await Flaky(succeed_on=3).asend(max_attempts=5)
    async with running_worker(["math"]):
        assert await job.aresult(timeout=10) == 3


async def test_timeout_fails_a_job_that_runs_too_long(layer: Any) -> None:
    """A job past its timeout is stopped and ends failed with TimeoutError."""
    job = await Sleep(seconds=5).asend(timeout=0.2, max_attempts=1)
    async with running_worker(["slow"]):
        with pytest.raises(layerq.JobFailed) as failed:
            await job.aresult(timeout=10)
    assert failed.value.error_type == "TimeoutError"


async def test_delayed_job_waits_before_running(layer: Any) -> None:
    """A job sent with delay= does not start before the delay (by its record's times)."""
    job = await Add(a=1, b=1).asend(delay=0.5)
    async with running_worker(["math"]):
        assert await job.aresult(timeout=10) == 2
    record = await job.arecord()
    assert record.started_at is not None
    assert record.enqueued_at is not None
    assert record.started_at - record.enqueued_at >= 0.5


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "math.unknown"}, "UnknownEventType"),
        ({"type": "math.add", "a": "x", "b": 1}, "InvalidEvent"),
        ({"type": "math.add", "a": 1, "b": 2}, "unsigned"),
    ],
)
async def test_unhandleable_messages_are_dead_lettered_with_a_reason(
    layer: Any, message: dict[str, Any], reason: str
) -> None:
    """Unknown types, invalid fields and unsigned messages go to the dead letters."""
    from layerq import clock
    from layerq.events import Envelope, build_message, new_job_id
    from layerq.jobs import JobRecord

    job_id = new_job_id()
    fields = {k: v for k, v in message.items() if k != "type"}
    raw = build_message(message["type"], fields, Envelope(id=job_id, enqueued=clock.now()))
    if reason != "unsigned":
        from layerq import signing

        raw["layerq"]["sig"] = signing.sign(raw)
    record = JobRecord(id=job_id, type=message["type"], channel="math", status=JobStatus.QUEUED)
    await layer.enqueue("math", raw, record)
    follow_up = await Add(a=1, b=1).asend()
    async with running_worker(["math"]):
        assert await follow_up.aresult(timeout=10) == 2, "the worker keeps going"
    [letter] = await layer.dead_letters("math")
    assert reason in letter.reason
    assert (await layer.get_record(job_id)).status is JobStatus.FAILED


async def test_plain_channels_message_without_envelope_is_dead_lettered(layer: Any) -> None:
    """A bare channel_layer.send() to a worker channel is recorded, not run or lost."""
    await layer.send("math", {"type": "math.add", "a": 1, "b": 2})
    async with running_worker(["math"]) as worker:
        for _ in range(200):
            if worker.processed:
                break
            await asyncio.sleep(0.01)
    [letter] = await layer.dead_letters("math")
    assert "no layerq envelope" in letter.reason


async def test_handler_retry_request_runs_again_without_failing(layer: Any) -> None:
    """layerq.Retry from a handler schedules another attempt."""
    job = await Again().asend()
    async with running_worker(["math"]):
        assert await job.aresult(timeout=10) == 2


async def test_notify_groups_receive_progress_then_success(layer: Any) -> None:
    """A notify group gets started, progress steps and succeeded, in order."""
    listener = await layer.new_channel()
    await layer.group_add("layerq.user.7", listener)
    job = await Steps(steps=3, pause=0.01).asend(notify=layerq.user_group(7))
    async with running_worker(["slow"]):
        await job.aresult(timeout=10)
        events = [await asyncio.wait_for(layer.receive(listener), 5) for _ in range(5)]
    kinds = [event["type"] for event in events]
    assert kinds == ["layerq.job.started"] + ["layerq.job.progress"] * 3 + ["layerq.job.succeeded"]
    assert [e["job"]["progress"] for e in events[1:4]] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert events[-1]["job"]["result"] == "done"
    assert all(e["job"]["id"] == job.id for e in events)


async def until_running(job: layerq.Job) -> None:
    """Wait (up to 5 s) until a worker has started ``job``."""
    for _ in range(500):
        if await job.astatus() is JobStatus.RUNNING:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job.id} did not start within 5 s")


async def all_ran_at_once(jobs: list[layerq.Job]) -> bool:
    """Whether every job started before any of them finished (by their records)."""
    records = [await job.arecord() for job in jobs]
    starts = [record.started_at for record in records]
    ends = [record.finished_at for record in records]
    assert None not in starts
    assert None not in ends
    return max(starts) < min(ends)  # type: ignore[type-var]


async def test_concurrent_async_jobs_overlap(layer: Any) -> None:
    """With concurrency 4, four sleeping jobs all run at once."""
    jobs = [await Sleep(seconds=0.3).asend() for _ in range(4)]
    async with running_worker(["slow"], concurrency=4):
        for job in jobs:
            await job.aresult(timeout=10)
    assert await all_ran_at_once(jobs)


async def test_sync_handlers_run_in_parallel_threads(layer: Any) -> None:
    """Sync handlers do not share one thread: three sleeping handlers run at once."""
    jobs = [await SyncSleep(seconds=0.3).asend() for _ in range(3)]
    async with running_worker(["sync"], concurrency=3):
        for job in jobs:
            await job.aresult(timeout=10)
    assert await all_ran_at_once(jobs)


async def test_a_job_longer_than_its_lease_keeps_it_by_heartbeat(layer: Any) -> None:
    """The worker renews the lease of a job that runs for several leases, so nothing
    takes it meanwhile and it runs once."""
    job = await Sleep(seconds=3.0).asend(max_attempts=1)
    with override_settings(LAYERQ={"lease": 1.0}):
        async with running_worker(["slow"]):
            await until_running(job)
            await asyncio.sleep(2.0)  # two leases later
            assert await layer.claim(["slow"], 1, 30, 0) == []
            await job.aresult(timeout=10)
    assert (await job.arecord()).attempt == 1


async def test_a_prefetching_worker_holds_its_prefetch_under_lease_and_runs_one_at_a_time(
    layer: Any,
) -> None:
    """With concurrency 1 and prefetch 2, the worker leases three of four jobs (the
    fourth is left for others) and runs them one after another."""
    jobs = [await Sleep(seconds=0.3).asend() for _ in range(4)]
    began = asyncio.get_running_loop().time()
    async with running_worker(["slow"], concurrency=1, prefetch=2):
        await until_running(jobs[0])
        await asyncio.sleep(0.05)
        left = await layer.claim(["slow"], 10, 30, 0)
        assert [delivery.job_id for delivery in left] == [jobs[3].id]
        await layer.release(left)
        assert [await job.aresult(timeout=10) for job in jobs] == [""] * 4
    assert asyncio.get_running_loop().time() - began >= 4 * 0.3  # never two at once
    assert [(await job.arecord()).attempt for job in jobs] == [1, 1, 1, 1]


async def test_a_prefetched_jobs_record_says_queued_until_it_starts(layer: Any) -> None:
    """The record of a job that waits in the prefetch says queued, not running;
    once it starts, running, with its attempt and a start time after its wait."""
    first = await Sleep(seconds=0.5).asend()
    second = await Sleep(seconds=0.5).asend()
    async with running_worker(["slow"], concurrency=1, prefetch=1):
        await until_running(first)
        await asyncio.sleep(0.1)
        assert await layer.claim(["slow"], 10, 30, 0) == []  # it is prefetched...
        waiting = await second.arecord()
        assert (waiting.status, waiting.attempt, waiting.started_at) == (
            JobStatus.QUEUED,
            0,
            None,
        )  # ...and says it waits
        await until_running(second)
        running = await second.arecord()
        assert (running.status, running.attempt) == (JobStatus.RUNNING, 1)
        assert running.started_at >= (await first.arecord()).finished_at
        assert await second.aresult(timeout=10) == ""


async def test_a_stopping_worker_waits_for_a_start_mark_in_flight(layer: Any) -> None:
    """The mark that a prefetched job runs, sent as it starts, is awaited by the
    worker's stop, before the layer closes (where it would fail, unapplied)."""
    job = await Sleep(seconds=0).asend()
    [delivery] = await layer.claim(["slow"], 1, 30, 0, running=0)
    assert not delivery.marked_running
    worker = Worker(application, ["slow"])
    worker._mark_running(delivery)
    await worker._drain()
    assert not worker._marking  # done, not left running past the stop
    record = await job.arecord()
    assert (record.status, record.attempt) == (JobStatus.RUNNING, 1)
    await layer.release([delivery])


async def test_a_prefetched_job_keeps_its_lease_while_it_waits_for_a_slot(layer: Any) -> None:
    """A job prefetched behind one that runs for several leases is heartbeat too:
    nothing takes it meanwhile, and it runs once, on its first attempt."""
    first = await Sleep(seconds=2.5).asend(max_attempts=1)
    second = await Sleep(seconds=0.0).asend(max_attempts=1)
    with override_settings(LAYERQ={"lease": 1.0}):
        async with running_worker(["slow"], concurrency=1, prefetch=1):
            await until_running(first)
            await asyncio.sleep(2.0)  # two leases later
            assert await layer.claim(["slow"], 10, 30, 0) == []
            await second.aresult(timeout=10)
    assert [(await job.arecord()).attempt for job in (first, second)] == [1, 1]


async def test_stopping_returns_prefetched_jobs_unrun(layer: Any) -> None:
    """A graceful stop lets the running job finish and returns the prefetched ones
    at once, their attempts not counted."""
    running = await Sleep(seconds=0.5).asend()
    waiting = [await Sleep(seconds=0.0).asend() for _ in range(2)]
    async with running_worker(["slow"], concurrency=1, prefetch=2) as worker:
        await until_running(running)
        await asyncio.sleep(0.05)
    assert worker.processed == 1
    assert await running.aresult(timeout=0) == ""
    records = [await job.arecord() for job in waiting]
    assert [(r.status, r.attempt) for r in records] == [(JobStatus.QUEUED, 0)] * 2
    assert len(await layer.claim(["slow"], 10, 30, 0)) == 2


def test_prefetch_is_never_negative_and_is_off_in_basic_mode(settings: Any, tmp_path: Any) -> None:
    """Worker refuses a negative prefetch; on a plain Channels layer (no leases) it
    prefetches nothing, whatever it was asked."""
    from layerq.runtime import Worker
    from tests.app.asgi import application

    with pytest.raises(ValueError, match="prefetch"):
        Worker(application, ["math"], prefetch=-1)
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert Worker(application, ["math"], prefetch=8).prefetch == 0


@pytest.mark.parametrize("prefetch", [0, 4])
async def test_burst_worker_exits_when_the_channel_is_empty(layer: Any, prefetch: int) -> None:
    """runworker --burst drains the channel, including its retries, then stops
    (with prefetch: once nothing runs and nothing waits for a slot)."""
    from layerq.runtime import Worker
    from tests.app.asgi import application

    done = [await Add(a=i, b=i).asend() for i in range(5)]
    flaky = await Flaky(succeed_on=2).asend()
    worker = Worker(application, ["math"], burst=True, concurrency=2, prefetch=prefetch)
    assert await asyncio.wait_for(worker.run(), 10) == 0
    assert [await job.aresult(timeout=0) for job in done] == [0, 2, 4, 6, 8]
    assert await flaky.aresult(timeout=0) == 2


async def test_cancelled_job_raises_job_cancelled(layer: Any) -> None:
    """A job cancelled before it ran reports cancelled."""
    job = await Multiply(a=2, b=2).asend(delay=30)
    assert await job.acancel()
    with pytest.raises(layerq.JobCancelled):
        await job.aresult(timeout=1)


async def test_sync_cancel_stops_a_waiting_job_but_not_a_running_one(layer: Any) -> None:
    """Job.cancel() from sync code: True for a job not yet started, False once it runs."""
    waiting = await Multiply(a=2, b=2).asend(delay=30)
    assert await asyncio.to_thread(waiting.cancel)
    assert await waiting.astatus() is JobStatus.CANCELLED
    running = await Sleep(seconds=0.5).asend()
    async with running_worker(["slow"]):
        await until_running(running)
        assert not await asyncio.to_thread(running.cancel)
        await running.aresult(timeout=10)
    assert await running.astatus() is JobStatus.SUCCEEDED


async def test_sync_handler_past_its_timeout_fails_and_its_late_result_is_dropped(
    layer: Any,
) -> None:
    """A sync handler cannot be stopped: at its timeout the job fails, and what the
    thread returns later does not change that."""
    job = await SyncSleep(seconds=0.6).asend(timeout=0.2, max_attempts=1)
    async with running_worker(["sync"]):
        with pytest.raises(layerq.JobFailed) as failed:
            await job.aresult(timeout=10)
        await asyncio.sleep(0.6)  # the thread has returned by now
    assert failed.value.error_type == "TimeoutError"
    record = await job.arecord()
    assert (record.status, record.result) == (JobStatus.FAILED, None)


@override_settings(LAYERQ={"sign": False})
async def test_unsigned_jobs_run_when_signing_is_off(layer: Any) -> None:
    """With LAYERQ['sign'] False, producers sign nothing and workers accept unsigned jobs."""
    job = await Add(a=2, b=5).asend()
    assert "sig" not in (await layer.claim(["math"], 1, 30, 0))[0].message["layerq"]
    await layer.flush()
    job = await Add(a=2, b=5).asend()
    async with running_worker(["math"]):
        assert await job.aresult(timeout=10) == 7


@override_settings(LAYERQ={"result_ttl": 5.0})
async def test_result_ttl_setting_sets_how_long_a_finished_record_is_kept(layer: Any) -> None:
    """The worker keeps a finished job's record for LAYERQ['result_ttl'] seconds."""
    from layerq import clock

    job = await Add(a=1, b=2).asend()
    async with running_worker(["math"]):
        assert await job.aresult(timeout=10) == 3
    now = clock.now()
    clock.set_clock(lambda: now + 4)
    try:
        assert await job.astatus() is JobStatus.SUCCEEDED
        clock.set_clock(lambda: now + 6)
        with pytest.raises(layerq.JobNotFound):
            await job.astatus()
    finally:
        clock.set_clock(None)


async def test_result_timeout_when_no_worker_runs(layer: Any) -> None:
    """result(timeout) raises ResultTimeout while the job is still queued."""
    job = await Add(a=1, b=2).asend()
    with pytest.raises(layerq.ResultTimeout):
        await job.aresult(timeout=0.1)


async def test_a_handle_rebuilt_from_the_id_alone_reads_the_record(layer: Any) -> None:
    """layerq.Job(job_id) finds the record a producer created."""
    sent = await Add(a=3, b=3).asend()
    async with running_worker(["math"]):
        assert await layerq.Job(sent.id).aresult(timeout=10) == 6


async def test_unknown_job_id_raises_job_not_found(layer: Any) -> None:
    """A Job handle with an id nobody sent has no record."""
    with pytest.raises(layerq.JobNotFound):
        await layerq.Job("0" * 32).astatus()


@override_settings(LAYERQ={"max_attempts": 1, "sign": True})
async def test_layerq_settings_set_the_default_attempts(layer: Any) -> None:
    """LAYERQ['max_attempts'] applies when the job does not say."""
    job = await Fail().asend()
    async with running_worker(["math"]):
        with pytest.raises(layerq.JobFailed):
            await job.aresult(timeout=10)
    assert (await job.arecord()).attempt == 1


async def test_a_job_arriving_as_the_worker_stops_is_returned_unrun(layer: Any) -> None:
    """Stop is asked while the worker waits on an empty channel; a job sent then
    is claimed by that wait but not run: it goes back to the channel, its attempt
    not counted, for the next worker."""
    async with running_worker(["math"]) as worker:
        # The worker waits for work, past its first wait on Redis (1 s), which a
        # new connection makes: the next hands deliveries over as they are read.
        await asyncio.sleep(1.3)
        worker.request_stop()
        job = await Add(a=1, b=2).asend()
    assert worker.processed == 0
    record = await job.arecord()
    assert (record.status, record.attempt) == (JobStatus.QUEUED, 0)
    async with running_worker(["math"]):
        assert await job.aresult(timeout=5) == 3
