"""A job's task starts at once: its first step runs before job_task returns, on
every Python (3.12's eager start; by hand on 3.11), as an ordinary task would
run it."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from layerq.handlers import job_task

pytestmark = pytest.mark.timeout(10)

where = contextvars.ContextVar[str]("where", default="outside")


async def test_the_first_step_runs_at_once_as_the_task_in_its_context() -> None:
    """The first step runs inside job_task, seeing the new task as the current
    one and the context it was given; what it sets stays in that context."""
    seen: list[object] = []
    context = contextvars.copy_context()
    context.run(where.set, "job")

    async def job() -> None:
        seen.append((asyncio.current_task(), where.get()))
        where.set("set by the job")
        await asyncio.sleep(0)
        seen.append((asyncio.current_task(), where.get()))

    task = job_task(job(), context)
    assert seen == [(task, "job")]  # before any loop turn
    await task
    assert seen == [(task, "job"), (task, "set by the job")]
    assert where.get() == "outside"


async def test_the_task_that_called_is_current_again_after() -> None:
    """Started from inside another task, job_task leaves that task current."""
    outer = asyncio.current_task()

    async def job() -> None:
        await asyncio.sleep(0)

    task = job_task(job(), contextvars.copy_context())
    assert asyncio.current_task() is outer
    await task


async def test_a_job_that_ends_in_its_first_step_gives_its_task_the_end() -> None:
    """A coroutine that never waits ends in its first step: the task ends with it,
    done at once (3.12) or at its first turn (3.11)."""

    async def job() -> None:
        return None

    async def failing() -> None:
        raise ValueError("in the first step")

    assert await job_task(job(), contextvars.copy_context()) is None
    with pytest.raises(ValueError, match="in the first step"):
        await job_task(failing(), contextvars.copy_context())


async def test_a_cancel_before_the_task_resumes_reaches_the_job_where_it_waits() -> None:
    """Cancelled after its first step, before its task ran again: the job sees
    the cancellation at the wait it stopped at, may clean up, and the task ends
    cancelled, the future it waited on cancelled too."""
    seen: list[str] = []
    blocker = asyncio.get_running_loop().create_future()

    async def job() -> None:
        try:
            await blocker
        except asyncio.CancelledError:
            seen.append("cancelled at its wait")
            raise

    task = job_task(job(), contextvars.copy_context())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled at its wait"]
    assert task.cancelled()
    assert blocker.cancelled()  # as Task.cancel does to the future a task waits on


def test_a_job_task_starts_at_once_on_uvloop() -> None:
    """On uvloop (uvicorn's default loop) too, the first step runs inside
    job_task as the new task, and the task carries on from there."""
    import uvloop  # a dev dependency: the test fails, never skips, without it

    async def scenario() -> None:
        seen: list[object] = []

        async def job() -> None:
            seen.append(asyncio.current_task())
            await asyncio.sleep(0)
            seen.append(asyncio.current_task())

        task = job_task(job(), contextvars.copy_context())
        assert seen == [task]
        await task
        assert seen == [task, task]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert type(runner.get_loop()).__module__.startswith("uvloop")
        runner.run(scenario())
