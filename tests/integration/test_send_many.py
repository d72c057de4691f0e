"""send_many / asend_many: many jobs a round trip, each one stored or refused on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.db import transaction
from django.test import override_settings

import layerq
from layerq.events import Envelope, build_message
from layerq.jobs import JobRecord, JobStatus
from layerq.layers.redis import ENQUEUE_CHUNK
from tests.app.events import Add, Steps
from tests.conftest import running_worker


@pytest.fixture
def sync_layer(layer_settings: Any) -> Any:
    return get_channel_layer()


def test_send_many_stores_every_job_across_chunks_and_channels(sync_layer: Any) -> None:
    """More jobs than one round trip holds, on two channels: all stored, Jobs in order."""
    count = 2 * ENQUEUE_CHUNK + 7
    events: list[Any] = [Add(a=i, b=1) for i in range(count)]
    events.insert(3, Steps(steps=1, pause=0.0))
    jobs = layerq.send_many(events)
    assert [job.channel for job in jobs[:5]] == ["math", "math", "math", "slow", "math"]
    assert len({job.id for job in jobs}) == count + 1
    assert all(job.status() is JobStatus.QUEUED for job in jobs)
    assert jobs[3].record().type == "slow.steps"


async def test_asend_many_jobs_run_with_their_results(layer: Any) -> None:
    """Jobs sent together from async code run, each with its own result."""
    jobs = await layerq.asend_many([Add(a=i, b=100) for i in range(20)])
    async with running_worker(["math"]):
        results = [await job.aresult(timeout=10) for job in jobs]
    assert results == [i + 100 for i in range(20)]


async def test_every_job_of_a_batch_tells_its_notify_groups(layer: Any) -> None:
    """asend_many(notify=) applies to each job: the group hears each one succeed."""
    listener = await layer.new_channel()
    await layer.group_add("layerq.user.9", listener)
    jobs = await layerq.asend_many([Add(a=i, b=1) for i in range(3)], notify=layerq.user_group(9))
    async with running_worker(["math"]):
        for job in jobs:
            await job.aresult(timeout=10)
        seen = set()
        while len(seen) < 3:
            event = await asyncio.wait_for(layer.receive(listener), 5)
            if event["type"] == "layerq.job.succeeded":
                seen.add(event["job"]["id"])
    assert seen == {job.id for job in jobs}


def test_a_bad_event_names_its_field(sync_layer: Any) -> None:
    """A dict event is validated as its registered Event; an empty batch sends nothing."""
    events: list[Any] = [Add(a=1, b=1), {"type": "math.add", "a": "x", "b": 1}]
    with pytest.raises(layerq.InvalidEvent, match=r"\$\.a"):
        layerq.send_many(events, channel="math")
    assert layerq.send_many([]) == []


async def test_nothing_stored_after_invalid_input(layer: Any) -> None:
    """A refused batch leaves the channel empty."""
    with pytest.raises(layerq.InvalidEvent):
        await layerq.asend_many([Add(a=1, b=1), Add(a=1, b="2")])  # type: ignore[arg-type]
    assert await layer.pending("math") == 0


@pytest.mark.parametrize(
    ("events", "options", "match"),
    [
        (Add(a=1, b=1), {}, "iterable of events"),
        ({"type": "math.add", "a": 1, "b": 1}, {}, "iterable of events"),
        ([{"type": "math.add", "a": 1, "b": 1}], {}, "pass channel="),
        ([Add(a=1, b=1)], {"delay": -1}, "delay"),
        ([Add(a=1, b=1)], {"channel": "no spaces"}, "channel"),
    ],
)
def test_bad_calls_are_refused(sync_layer: Any, events: Any, options: Any, match: str) -> None:
    """One event instead of a list, a dict without a channel, bad options."""
    with pytest.raises(layerq.InvalidEvent, match=match):
        layerq.send_many(events, **options)


def test_dicts_and_options_apply_to_every_job(sync_layer: Any) -> None:
    """channel= sends dict events; options such as max_attempts reach every record."""
    jobs = layerq.send_many(
        [{"type": "math.add", "a": 1, "b": 2}, Add(a=3, b=4)], channel="math", max_attempts=7
    )
    assert [job.record().max_attempts for job in jobs] == [7, 7]
    assert {job.channel for job in jobs} == {"math"}


async def test_a_full_channel_keeps_what_fit_and_names_the_rest(layer: Any) -> None:
    """At capacity the jobs that fit are stored; QueueFull lists sent and refused."""
    layer.capacity = 5
    with pytest.raises(layerq.QueueFull, match="3 of 8 jobs refused") as raised:
        await layerq.asend_many([Add(a=i, b=0) for i in range(8)])
    sent, refused = raised.value.sent, raised.value.refused
    assert len(sent) == 5
    assert len(refused) == 3
    assert await layer.pending("math") == 5
    for job in sent:
        assert await job.astatus() is JobStatus.QUEUED
    for job in refused:
        with pytest.raises(layerq.JobNotFound):
            await job.astatus()
    async with running_worker(["math"]):
        assert sorted([await job.aresult(timeout=10) for job in sent]) == [0, 1, 2, 3, 4]


def test_sync_full_channel_raises_queue_full(sync_layer: Any) -> None:
    """send_many from sync code refuses past capacity as asend_many does."""
    sync_layer.capacity = 2
    with pytest.raises(layerq.QueueFull) as raised:
        layerq.send_many([Add(a=i, b=0) for i in range(3)])
    assert [job.status() for job in raised.value.sent] == [JobStatus.QUEUED] * 2
    assert len(raised.value.refused) == 1


async def test_a_repeated_batch_is_stored_once(layer: Any) -> None:
    """A chunk sent again (a retry after a fault) does not store its jobs twice."""
    batch = []
    for index in range(3):
        envelope = Envelope(id=f"repeat{index}", enqueued=1.0)
        message = build_message("math.add", {"a": index, "b": 0}, envelope)
        record = JobRecord(id=envelope.id, type="math.add", channel="math", status=JobStatus.QUEUED)
        batch.append((message, record))
    assert await layer.enqueue_many("math", batch) == [True] * 3
    assert await layer.enqueue_many("math", batch) == [True] * 3
    assert await layer.pending("math") == 3


@pytest.mark.django_db(transaction=True)
def test_on_commit_sends_the_batch_after_commit(sync_layer: Any) -> None:
    """on_commit=True stores the whole batch when the transaction commits, else nothing."""
    with transaction.atomic():
        jobs = layerq.send_many([Add(a=1, b=1), Add(a=2, b=2)], on_commit=True)
        with pytest.raises(layerq.JobNotFound):
            jobs[0].status()
    assert [job.status() for job in jobs] == [JobStatus.QUEUED] * 2
    with transaction.atomic():
        lost = layerq.send_many([Add(a=1, b=1)], on_commit=True)
        transaction.set_rollback(True)
    with pytest.raises(layerq.JobNotFound):
        lost[0].status()


async def test_basic_mode_sends_each_and_refuses_past_capacity() -> None:
    """On InMemoryChannelLayer the batch is sent message by message, full ones refused."""
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {}}}
    layers["default"]["CONFIG"] = {"capacity": 3}
    with override_settings(CHANNEL_LAYERS=layers):
        inmemory = get_channel_layer()
        with pytest.raises(layerq.QueueFull) as raised:
            await layerq.asend_many([Add(a=i, b=0) for i in range(4)])
        assert len(raised.value.sent) == 3
        assert len(raised.value.refused) == 1
        received = [await inmemory.receive("math") for _ in range(3)]
        assert [message["a"] for message in received] == [0, 1, 2]
        with pytest.raises(layerq.Unsupported, match="delay"):
            await layerq.asend_many([Add(a=1, b=1)], delay=1)


def test_basic_mode_sync_send_many_sends_every_message() -> None:
    """From sync code on InMemoryChannelLayer, every message of the batch arrives."""
    from asgiref.sync import async_to_sync

    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers):
        inmemory = get_channel_layer()
        jobs = layerq.send_many([Add(a=i, b=0) for i in range(5)])

        async def drain() -> list[Any]:
            return [await inmemory.receive("math") for _ in range(5)]

        received = async_to_sync(drain)()
    assert [message["layerq"]["id"] for message in received] == [job.id for job in jobs]


class FaultFirst(layerq.Event, type="fault.first"):
    n: int


class FaultDown(layerq.Event, type="fault.down"):
    n: int


class FaultLast(layerq.Event, type="fault.last"):
    n: int


def asyncio_send_many(events: list[layerq.Event]) -> list[layerq.Job]:
    async def send() -> list[layerq.Job]:
        try:
            return await layerq.asend_many(events)
        finally:
            await get_channel_layer().close()  # this event loop's connections

    return asyncio.run(send())


def channels_on(layer: Any, host: int, count: int) -> list[str]:
    """``count`` channel names that ``layer`` keeps on its host number ``host``."""
    names = (f"fault{index}" for index in range(1000))
    return [name for name in names if layer._base(name)[0] == host][:count]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_fault_mid_send_many_says_which_jobs_were_stored(mode: str) -> None:
    """With one of two Redis hosts down, send_many stores the jobs of the live host's
    first channel, then fails on the dead host's. Its TransportError names the stored
    jobs ``sent`` and the rest ``unconfirmed``; those were indeed not stored."""
    from layerq.testing import RedisServer

    with RedisServer() as live, RedisServer() as dead:
        config = {"hosts": [live.url, dead.url], "prefix": "fault"}
        layers = {"default": {"BACKEND": "layerq.layers.RedisChannelLayer", "CONFIG": config}}
        with override_settings(CHANNEL_LAYERS=layers):
            layer = get_channel_layer()
            (first, last), (down,) = channels_on(layer, 0, 2), channels_on(layer, 1, 1)
            FaultFirst.event_channel, FaultDown.event_channel = first, down
            FaultLast.event_channel = last
            dead.stop()
            events: list[layerq.Event] = [FaultFirst(n=i) for i in range(3)]
            events += [FaultDown(n=3), FaultLast(n=4), FaultDown(n=5)]
            send = layerq.send_many if mode == "sync" else asyncio_send_many
            with pytest.raises(layerq.TransportError) as raised:
                send(events)
            fault = raised.value
            assert [job.channel for job in fault.sent] == [first] * 3
            assert [job.channel for job in fault.unconfirmed] == [down, last, down]
            assert fault.refused == []
            dead.start()
            assert all(job.status() is JobStatus.QUEUED for job in fault.sent)
            for job in fault.unconfirmed:
                with pytest.raises(layerq.JobNotFound):
                    job.status()
            dead.stop()
            with pytest.raises(layerq.TransportError) as raised:
                FaultDown(n=6).send()
            (job,) = raised.value.unconfirmed
            assert (job.type, job.channel) == ("fault.down", down)
            dead.start()
            with pytest.raises(layerq.JobNotFound):
                job.status()
            asyncio.run(layer.close())  # and the sync connections
