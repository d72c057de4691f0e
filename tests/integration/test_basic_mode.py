"""Basic mode: any other Channels layer runs jobs at most once, and says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import structlog
from channels.layers import get_channel_layer
from django.test import override_settings
from django.utils import timezone

import layerq
from tests.app.events import Add, Steps
from tests.conftest import running_worker


@pytest.fixture
async def inmemory() -> AsyncIterator[Any]:
    """The default alias as an InMemoryChannelLayer."""
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    ):
        yield get_channel_layer()


async def test_worker_warns_once_that_it_runs_in_basic_mode(inmemory: Any) -> None:
    """runworker on InMemoryChannelLayer logs one worker.basic_mode warning naming the loss."""
    with structlog.testing.capture_logs() as logs:
        async with running_worker(["math"]):
            await asyncio.sleep(0.05)
    warnings = [entry for entry in logs if entry["event"] == "worker.basic_mode"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "at-most-once" in warnings[0]["lost"]


async def test_jobs_run_and_notify_groups_in_basic_mode(inmemory: Any) -> None:
    """A job sent on InMemory runs and its notify group hears it succeed."""
    listener = await inmemory.new_channel()
    await inmemory.group_add("layerq.user.1", listener)
    job = await Steps(steps=2, pause=0.0).asend(notify=layerq.user_group(1))
    async with running_worker(["slow"]):
        kinds = []
        while not kinds or kinds[-1] != "layerq.job.succeeded":
            event = await asyncio.wait_for(inmemory.receive(listener), 5)
            assert event["job"]["id"] == job.id
            kinds.append(event["type"])
    assert kinds == ["layerq.job.started", *["layerq.job.progress"] * 2, "layerq.job.succeeded"]


async def test_records_and_delays_are_unsupported_in_basic_mode(inmemory: Any) -> None:
    """status() and delay= raise Unsupported instead of pretending."""
    job = await Add(a=1, b=1).asend()
    with pytest.raises(layerq.Unsupported, match="InMemoryChannelLayer"):
        await job.astatus()
    with pytest.raises(layerq.Unsupported, match="delay"):
        await Add(a=1, b=1).asend(delay=1)


async def test_unsigned_message_is_logged_dead_in_basic_mode(inmemory: Any) -> None:
    """A plain message on a worker channel is not run; job.dead records why."""
    await inmemory.send("math", {"type": "math.add", "a": 1, "b": 2})
    with structlog.testing.capture_logs() as logs:
        async with running_worker(["math"]) as worker:
            for _ in range(200):
                if worker.processed:
                    break
                await asyncio.sleep(0.01)
    [dead] = [entry for entry in logs if entry["event"] == "job.dead"]
    assert "no layerq envelope" in dead["reason"]


async def test_stopping_leaves_unstarted_messages_on_the_channel(inmemory: Any) -> None:
    """A graceful stop in basic mode finishes the running job and keeps the others queued."""
    from tests.app.events import Sleep

    for index in range(3):
        await Sleep(seconds=0.2, marker=f"b{index}").asend()
    async with running_worker(["slow"], concurrency=1) as worker:
        for _ in range(500):  # stop once the first job runs
            if worker._running:
                break
            await asyncio.sleep(0.01)
    assert worker.processed == 1
    left = [await asyncio.wait_for(inmemory.receive("slow"), 1) for _ in range(2)]
    assert [message["marker"] for message in left] == ["b1", "b2"]


async def test_django_tasks_run_in_basic_mode_without_results(inmemory: Any) -> None:
    """A @task sent on InMemory runs (with no record, its outcome shows only in the
    task_finished signal); get_result() and run_after raise Unsupported."""
    from layerq.tasks import task_finished
    from tests.app import tasks

    finished: list[Any] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        finished.append((task_result.id, str(task_result.status), task_result.return_value))

    task_finished.connect(receiver, weak=False)
    try:
        result = await tasks.add.aenqueue(1, 2)
        async with running_worker(["tasks.default"]):
            for _ in range(100):
                if finished:
                    break
                await asyncio.sleep(0.02)
    finally:
        task_finished.disconnect(receiver)
    assert finished == [(result.id, "SUCCESSFUL", 3)]
    with pytest.raises(layerq.Unsupported, match="task results"):
        await tasks.add.aget_result(result.id)
    with pytest.raises(layerq.Unsupported, match="delay"):
        await tasks.add.using(run_after=timezone.now() + timedelta(seconds=1)).aenqueue(1, 2)
