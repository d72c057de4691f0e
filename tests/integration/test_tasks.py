"""django.tasks on layerq: @task functions enqueued with LayerqBackend, run by TaskWorker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from django.utils import timezone

import layerq
from layerq.jobs import JobStatus
from layerq.tasks import (
    InvalidTask,
    InvalidTaskBackend,
    TaskCall,
    TaskResultStatus,
    task_enqueued,
    task_finished,
    task_started,
)
from tests.app import tasks
from tests.conftest import running_worker

TASKS = {"BACKEND": "layerq.tasks.LayerqBackend", "QUEUES": ["default", "other"]}


@pytest.fixture
def signals() -> Iterator[list[tuple[str, str, str]]]:
    """(signal, task result id, status) of every task signal sent during the test."""
    seen: list[tuple[str, str, str]] = []
    receivers = []
    for name, signal in [
        ("enqueued", task_enqueued),
        ("started", task_started),
        ("finished", task_finished),
    ]:

        def receiver(sender: Any, task_result: Any, name: str = name, **kwargs: Any) -> None:
            seen.append((name, task_result.id, str(task_result.status)))

        signal.connect(receiver, weak=False)
        receivers.append((signal, receiver))
    yield seen
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def test_enqueue_from_sync_code_sends_a_job_with_the_results_id(sync_layer: Any) -> None:
    """enqueue() returns a READY TaskResult whose id is the layerq job's, queued on
    the channel of the task's queue."""
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.enqueued_at is not None
    assert result.args == [2, 3]
    record = layerq.Job(result.id).record()
    assert (record.status, record.channel, record.type) == (
        JobStatus.QUEUED,
        "tasks.default",
        "layerq.task",
    )


async def test_a_sync_task_runs_and_its_value_is_the_jobs_result(
    layer: Any, signals: list[tuple[str, str, str]]
) -> None:
    """A plain function runs on the worker; the signals tell its life, in order."""
    result = await tasks.add.aenqueue(2, b=3)
    async with running_worker(["tasks.default"]):
        assert await layerq.Job(result.id).aresult(timeout=10) == 5
    assert signals == [
        ("enqueued", result.id, "READY"),
        ("started", result.id, "RUNNING"),
        ("finished", result.id, "SUCCESSFUL"),
    ]


async def test_an_async_task_runs_on_its_queues_channel(layer: Any) -> None:
    """An async def task goes to "tasks.other" as an AsyncTaskCall and is awaited."""
    result = await tasks.async_add.aenqueue(4, 5)
    record = await layerq.Job(result.id).arecord()
    assert (record.channel, record.type) == ("tasks.other", "layerq.atask")
    async with running_worker(["tasks.other"]):
        assert await layerq.Job(result.id).aresult(timeout=10) == 9


async def test_a_failing_task_is_retried_and_its_context_counts_attempts(layer: Any) -> None:
    """takes_context: context.attempt is the job's attempt; a raise is retried."""
    result = await tasks.fail_before.aenqueue(attempt=3)
    async with running_worker(["tasks.default"]):
        assert await layerq.Job(result.id).aresult(timeout=10) == 3


async def test_a_task_that_keeps_failing_is_dead_lettered(
    layer: Any, signals: list[tuple[str, str, str]]
) -> None:
    """OPTIONS max_attempts bounds the attempts; the job then fails with the task's error."""
    with override_settings(TASKS={"default": {**TASKS, "OPTIONS": {"max_attempts": 2}}}):
        result = await tasks.explode.aenqueue()
        async with running_worker(["tasks.default"]):
            with pytest.raises(layerq.JobFailed) as failed:
                await layerq.Job(result.id).aresult(timeout=10)
    assert (failed.value.error_type, failed.value.error_message) == ("KeyError", "'boom'")
    assert [s for s in signals if s[0] == "finished"] == [("finished", result.id, "FAILED")] * 2
    (dead,) = await layer.dead_letters("tasks.default")
    assert dead.job_id == result.id


async def test_a_value_json_cannot_hold_fails_the_task(layer: Any) -> None:
    """A return value Django could not store as JSON fails the job, as in Django."""
    with override_settings(TASKS={"default": {**TASKS, "OPTIONS": {"max_attempts": 1}}}):
        result = await tasks.unserialisable.aenqueue()
        async with running_worker(["tasks.default"]):
            with pytest.raises(layerq.JobFailed) as failed:
                await layerq.Job(result.id).aresult(timeout=10)
    assert failed.value.error_type == "TypeError"


async def test_run_after_delays_the_job(layer: Any) -> None:
    """A task deferred with run_after does not start before then."""
    due = timezone.now() + timedelta(seconds=0.6)
    result = await tasks.add.using(run_after=due).aenqueue(1, 1)
    async with running_worker(["tasks.default"]):
        assert await layerq.Job(result.id).aresult(timeout=10) == 2
    record = await layerq.Job(result.id).arecord()
    assert record.started_at is not None
    assert record.started_at >= due.timestamp() - 0.05


async def test_a_message_naming_no_task_is_dead_lettered(layer: Any) -> None:
    """A call whose path is not a @task function fails (it could be a deploy skew,
    so it is retried like any failure) and ends dead-lettered with the reason."""
    call = TaskCall(task="os.path.join", args=["a"], kwargs={}, backend="default")
    job = await call.asend("tasks.default", max_attempts=1)
    async with running_worker(["tasks.default"]):
        with pytest.raises(layerq.JobFailed) as failed:
            await job.aresult(timeout=10)
    assert failed.value.error_type == "ImportError"
    assert "os.path.join is not a task" in failed.value.error_message


def test_what_the_backend_cannot_do_is_refused_at_enqueue(sync_layer: Any) -> None:
    """Priorities, queues outside QUEUES and arguments JSON cannot hold are refused
    with Django's errors, and nothing is sent."""
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=10)
    with pytest.raises(InvalidTask, match="Queue 'elsewhere'"):
        tasks.add.using(queue_name="elsewhere")
    with pytest.raises(TypeError):
        tasks.add.enqueue(object(), 1)
    assert async_to_sync(sync_layer.pending)("tasks.default") == 0


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"OPTIONS": {"lease": 5}}, r"unknown OPTIONS \['lease'\]"),
        ({"QUEUES": ["no spaces"]}, "queue 'no spaces' makes channel 'tasks.no spaces'"),
    ],
)
def test_bad_backend_settings_are_refused(params: dict[str, Any], match: str) -> None:
    """Unknown OPTIONS and queues that make no valid channel name are configuration errors."""
    from layerq.tasks import LayerqBackend

    with pytest.raises(InvalidTaskBackend, match=match):
        LayerqBackend("default", {**TASKS, **params})
