"""How the worker calls an async handler: its first step at once, the rest under the timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import markcoroutinefunction, sync_to_async

from layerq.handlers import HandlerRunner


@pytest.fixture
def handlers() -> Iterator[HandlerRunner]:
    """The worker's handler runner, exercised directly."""
    runner = HandlerRunner(2)
    yield runner
    runner.close()


async def test_a_handler_that_never_waits_gives_its_value(handlers: HandlerRunner) -> None:
    """A handler that returns without waiting gives its value, under any timeout."""

    async def handler(value: int) -> int:
        return value + 1

    assert await handlers.call(handler, 1, 0.000001) == 2
    assert await handlers.call(handler, 1, None) == 2


async def test_values_and_results_pass_through_the_waits(handlers: HandlerRunner) -> None:
    """What a handler awaits after its first step reaches it, and its result comes back."""
    loop = asyncio.get_running_loop()

    async def handler(value: int) -> list[Any]:
        first = loop.create_future()
        loop.call_later(0.01, first.set_result, "a")
        await asyncio.sleep(0)  # a bare yield: the task steps it again at once
        second = loop.create_future()
        loop.call_later(0.01, second.set_result, "b")
        return [value, await first, await second]

    assert await handlers.call(handler, 7, 5.0) == [7, "a", "b"]


async def test_an_error_after_a_wait_is_the_handlers(handlers: HandlerRunner) -> None:
    """An exception raised after the first step comes out of the call as raised."""

    async def handler(_: Any) -> None:
        await asyncio.sleep(0.01)
        raise ValueError("after a wait")

    with pytest.raises(ValueError, match="after a wait"):
        await handlers.call(handler, None, 5.0)


async def test_the_timeout_counts_from_before_the_first_step(handlers: HandlerRunner) -> None:
    """A first step that blocks 0.3 s, then a 0.3 s wait: past a 0.4 s timeout."""

    async def handler(_: Any) -> str:
        time.sleep(0.3)  # noqa: ASYNC251 - a blocking step, which nothing can interrupt
        await asyncio.sleep(0.3)
        return "too late"

    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await handlers.call(handler, None, 0.4)
    assert time.monotonic() - began < 0.55


async def test_a_wait_past_the_timeout_is_cut_short(handlers: HandlerRunner) -> None:
    """A handler waiting past its timeout is stopped at the timeout, with TimeoutError."""

    async def handler(_: Any) -> None:
        await asyncio.sleep(5)

    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await handlers.call(handler, None, 0.1)
    assert time.monotonic() - began < 1.0


async def test_cancelling_the_job_cancels_the_handler_where_it_waits(
    handlers: HandlerRunner,
) -> None:
    """A job task cancelled (shutdown) while its handler waits: the handler sees the
    cancellation where it waits, may clean up, and the task ends cancelled."""
    seen: list[str] = []
    waiting = asyncio.Event()

    async def handler(_: Any) -> None:
        try:
            waiting.set()
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            await asyncio.sleep(0.01)  # clean-up that waits still runs
            seen.append("cleaned up")
            raise

    task = asyncio.ensure_future(handlers.call(handler, None, 5.0))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled", "cleaned up"]


async def test_a_marked_coroutine_function_returning_a_future_is_awaited(
    handlers: HandlerRunner,
) -> None:
    """A handler marked as a coroutine function that returns a future (not a
    coroutine) is awaited as it is, under its timeout."""
    loop = asyncio.get_running_loop()

    def handler(value: int) -> asyncio.Future[int]:
        future = loop.create_future()
        loop.call_later(0.01, future.set_result, value * 2)
        return future

    markcoroutinefunction(handler)
    assert await handlers.call(handler, 21, 5.0) == 42


async def test_a_sync_to_async_handler_runs_as_an_async_one(handlers: HandlerRunner) -> None:
    """A handler wrapped in sync_to_async is awaited (not run in a worker thread,
    where calling it would only make a coroutine)."""

    def double(value: int) -> int:
        return value * 2

    assert await handlers.call(sync_to_async(double), 21, 5.0) == 42
