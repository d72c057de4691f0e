"""django.tasks on layerq: @task functions enqueued with LayerqBackend, run by TaskWorker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from django.utils import timezone

import layerq
from layerq.apps import check_task_routes
from layerq.jobs import JobStatus
from layerq.tasks import (
    InvalidTask,
    InvalidTaskBackend,
    LayerqBackend,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
    task_finished,
    task_started,
)
from tests.app import tasks
from tests.app.events import Add
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


def test_enqueue_from_sync_code_sends_a_job_named_after_the_task(sync_layer: Any) -> None:
    """enqueue() returns a READY TaskResult whose id is the layerq job's, whose type
    is the task's path, on the channel of the task's queue; get_result() agrees."""
    result = tasks.add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY
    assert result.enqueued_at is not None
    assert (result.args, result.kwargs) == ([2], {"b": 3})
    record = layerq.Job(result.id).record()
    assert (record.status, record.channel, record.type) == (
        JobStatus.QUEUED,
        "tasks.default",
        "layerq.task.tests.app.tasks.add",
    )
    found = tasks.add.get_result(result.id)
    assert (found.status, found.args, found.kwargs, found.attempts) == (
        TaskResultStatus.READY,
        [2],
        {"b": 3},
        0,
    )
    assert abs((found.enqueued_at - result.enqueued_at).total_seconds()) < 1


async def test_a_sync_task_runs_and_get_result_tells_its_outcome(
    layer: Any, signals: list[tuple[str, str, str]]
) -> None:
    """A plain function runs on the worker; the signals tell its life, in order; the
    result read back has its return value, arguments and times."""
    result = await tasks.add.aenqueue(2, b=3)
    async with running_worker(["tasks.default"]):
        outcome = await layerq.Job(result.id).aresult(timeout=10)
    assert outcome == {"return_value": 5, "args": [2], "kwargs": {"b": 3}}
    assert signals == [
        ("enqueued", result.id, "READY"),
        ("started", result.id, "RUNNING"),
        ("finished", result.id, "SUCCESSFUL"),
    ]
    await result.arefresh()
    assert (result.status, result.return_value, result.attempts) == (
        TaskResultStatus.SUCCESSFUL,
        5,
        1,
    )
    assert (result.args, result.kwargs, result.errors) == ([2], {"b": 3}, [])
    assert result.enqueued_at <= result.started_at <= result.finished_at


async def test_an_async_task_runs_on_its_queues_channel(layer: Any) -> None:
    """An async def task goes to "tasks.other" and is awaited in the worker's loop."""
    result = await tasks.async_add.aenqueue(4, 5)
    record = await layerq.Job(result.id).arecord()
    assert record.channel == "tasks.other"
    async with running_worker(["tasks.other"]):
        await layerq.Job(result.id).aresult(timeout=10)
    assert (await tasks.async_add.aget_result(result.id)).return_value == 9


async def test_a_failing_task_is_retried_and_its_context_counts_attempts(layer: Any) -> None:
    """takes_context: context.attempt is the job's attempt; a raise is retried."""
    result = await tasks.fail_before.aenqueue(attempt=3)
    async with running_worker(["tasks.default"]):
        await layerq.Job(result.id).aresult(timeout=10)
    found = await tasks.fail_before.aget_result(result.id)
    assert (found.return_value, found.attempts) == (3, 3)


async def test_a_task_that_keeps_failing_is_dead_lettered_with_its_error(
    layer: Any, signals: list[tuple[str, str, str]]
) -> None:
    """OPTIONS max_attempts bounds the attempts; the result is FAILED with the error,
    whose class TaskError finds; the call's arguments are read from the dead letter."""
    with override_settings(TASKS={"default": {**TASKS, "OPTIONS": {"max_attempts": 2}}}):
        result = await tasks.explode.aenqueue("boom")
        async with running_worker(["tasks.default"]):
            with pytest.raises(layerq.JobFailed) as failed:
                await layerq.Job(result.id).aresult(timeout=10)
        found = await tasks.explode.aget_result(result.id)
    assert (failed.value.error_type, failed.value.error_message) == ("KeyError", "'boom'")
    assert [s for s in signals if s[0] == "finished"] == [("finished", result.id, "FAILED")] * 2
    (dead,) = await layer.dead_letters("tasks.default")
    assert dead.job_id == result.id
    assert (found.status, found.attempts, found.args) == (TaskResultStatus.FAILED, 2, ["boom"])
    [error] = found.errors
    assert (error.exception_class, error.traceback) == (KeyError, "'boom'")
    with pytest.raises(ValueError, match="Task failed"):
        found.return_value  # noqa: B018


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
        await layerq.Job(result.id).aresult(timeout=10)
    found = await tasks.add.aget_result(result.id)
    assert found.return_value == 2
    assert found.started_at >= due - timedelta(seconds=0.05)


async def test_a_cancelled_task_reads_failed(layer: Any) -> None:
    """A task job cancelled through layerq before it ran is a FAILED result whose
    error says so (its message, with the arguments, is gone)."""
    result = await tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).aenqueue(1, 2)
    assert await layerq.Job(result.id).acancel()
    found = await tasks.add.aget_result(result.id)
    assert (found.status, found.args, found.attempts) == (TaskResultStatus.FAILED, [], 0)
    [error] = found.errors
    assert error.exception_class is layerq.JobCancelled


async def test_a_job_naming_no_task_is_dead_lettered_at_once(layer: Any) -> None:
    """A task job whose path is not a @task function in the worker (a deploy skew,
    say) is dead-lettered at its first attempt, as a job of an unknown type is."""
    event = {"type": "layerq.task.os.path.join", "args": ["a"], "kwargs": {}, "backend": "x"}
    job = await layerq.asend("tasks.default", event, max_attempts=3)
    async with running_worker(["tasks.default"]):
        with pytest.raises(layerq.JobFailed) as failed:
            await job.aresult(timeout=10)
    assert "os.path.join is not a task" in failed.value.error_message
    [dead] = await layer.dead_letters("tasks.default")
    assert dead.job_id == job.id
    assert "UnknownEventType" in dead.reason
    assert (await job.arecord()).attempt == 1


async def test_get_result_knows_only_task_jobs(layer: Any) -> None:
    """An unknown id, or a job that is not a task's, is TaskResultDoesNotExist."""
    plain = await Add(a=1, b=2).asend()
    backend = LayerqBackend("default", TASKS)
    for result_id in [plain.id, "0" * 32]:
        with pytest.raises(TaskResultDoesNotExist):
            await backend.aget_result(result_id)
        with pytest.raises(TaskResultDoesNotExist):
            await asyncio.to_thread(backend.get_result, result_id)


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
    with pytest.raises(InvalidTaskBackend, match=match):
        LayerqBackend("default", {**TASKS, **params})


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, []),
        ({"QUEUES": ["default", "missing"]}, [("layerq.W001", "queue 'missing'")]),
        (
            {"QUEUES": ["math"], "OPTIONS": {"channel_prefix": ""}},
            [("layerq.W002", "routed to MathWorker, which is not a TaskWorker")],
        ),
        ({"OPTIONS": {"lease": 5}}, [("layerq.E002", "unknown OPTIONS")]),
    ],
)
def test_the_system_check_finds_queues_no_task_worker_serves(
    params: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    """The check warns of a queue whose worker channel is not routed to a TaskWorker,
    and reports a backend its settings cannot build."""
    with override_settings(TASKS={"default": {**TASKS, **params}}):
        found = check_task_routes()
    assert [message.id for message in found] == [code for code, _ in expected]
    for message, (_, text) in zip(found, expected, strict=True):
        assert text in message.msg


def test_manage_py_check_runs_the_task_route_check() -> None:
    """The check is registered: Django's run_checks (manage.py check) reports it."""
    from django.core.checks import run_checks

    with override_settings(TASKS={"default": {**TASKS, "QUEUES": ["missing"]}}):
        assert "layerq.W001" in [message.id for message in run_checks()]
