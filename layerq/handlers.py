"""Calling a job's handler: an async one in the worker's loop, its first step at
once and the rest under the job's timeout; a sync one in a thread pool.

A timeout stops an async handler at its next wait (it is cancelled there);
a thread cannot be stopped, so a sync handler that times out fails its job
and finishes on its own, its late result discarded.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Awaitable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from contextvars import Context
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.db import close_old_connections


class HandlerRunner:
    """Runs handlers: async ones in the running loop, sync ones in ``concurrency`` threads."""

    def __init__(self, concurrency: int) -> None:
        self.threads = ThreadPoolExecutor(concurrency, thread_name_prefix="layerq-job")
        self._is_async: dict[Any, bool] = {}  # handler function -> async def?

    async def call(self, handler: Any, argument: Any, timeout: float | None) -> Any:
        """``handler(argument)``'s value; TimeoutError after ``timeout`` s (None: no limit)."""
        function = getattr(handler, "__func__", handler)
        is_async = self._is_async.get(function)
        if is_async is None:
            # asgiref's test: it also knows functions marked as coroutine functions
            # (markcoroutinefunction, sync_to_async) on Python 3.11.
            is_async = self._is_async[function] = iscoroutinefunction(handler)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if is_async:
            coroutine = handler(argument)
            if type(coroutine) is not types.CoroutineType:
                # A function marked as a coroutine function that returns another
                # awaitable (markcoroutinefunction): awaited as it is.
                return await _within(coroutine, deadline)
            try:
                # Its first step runs here, before any timer is set: a handler
                # that never waits finishes in it, and no timer could have
                # stopped that step anyway (it fires only at a wait).
                first = coroutine.send(None)
            except StopIteration as done:
                return done.value
            return await _within(_Resumed(coroutine, first), deadline)

        def run() -> Any:
            close_old_connections()
            try:
                return handler(argument)
            finally:
                close_old_connections()

        context = contextvars.copy_context()
        future = loop.run_in_executor(self.threads, context.run, run)
        # A thread cannot be stopped: on timeout the job fails and the thread
        # finishes on its own (its late result is discarded).
        return await _within(future, deadline)

    def close(self) -> None:
        """Stop the threads; a sync handler still running finishes on its own."""
        self.threads.shutdown(wait=False, cancel_futures=True)


async def _within(awaitable: Awaitable[Any], deadline: float | None) -> Any:
    """Await ``awaitable`` in the current task; TimeoutError once the loop's clock
    passes ``deadline`` (None: no limit).

    What ``asyncio.timeout_at`` does, for a quarter of its cost (one timer, no
    context manager): it is paid once per job.
    """
    if deadline is None:
        return await awaitable
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_at(deadline, expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        # Our own cancellation becomes the timeout; any other (shutdown) stands.
        if expired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()


class _Resumed:
    """The rest of a coroutine whose first step has run (and yielded ``first``),
    as an awaitable: awaiting it goes on where the step stopped, as ``await
    coroutine`` would have, passing values, exceptions and cancellation through."""

    __slots__ = ("_coroutine", "_first")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coroutine = coroutine
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, step = self._coroutine, self._first
        while True:
            try:
                sent = yield step
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # cancellation included: the coroutine decides
                try:
                    step = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    step = coroutine.send(sent)
                except StopIteration as done:
                    return done.value


if sys.version_info >= (3, 12):

    def job_task(coroutine: Coroutine[Any, Any, None], context: Context) -> asyncio.Task[None]:
        """A job's task, its first step run at once: up to the handler's first wait,
        without a loop turn in between (the worker starts jobs as their claim's
        reply is read, see layerq.runtime.Worker._take_early)."""
        loop = asyncio.get_running_loop()
        return asyncio.Task(coroutine, loop=loop, context=context, eager_start=True)

else:
    from asyncio.tasks import _enter_task, _leave_task

    def job_task(coroutine: Coroutine[Any, Any, None], context: Context) -> asyncio.Task[None]:
        """:func:`job_task` of Python 3.12 (eager start), done by hand on 3.11.

        The task is created around a :class:`_Started`, then the coroutine's first
        step runs here, in the task's context and as its current task (swapped in
        as 3.12 does); the task's own first step, a loop turn later, carries on
        from where that step stopped. Saves the worker a loop turn a job.
        """
        loop = asyncio.get_running_loop()
        started = _Started(coroutine)
        task = loop.create_task(started, context=context)
        outer = asyncio.current_task(loop)  # the worker's loop task, or None in a read
        if outer is not None:
            _leave_task(loop, outer)
        _enter_task(loop, task)
        try:
            context.run(started.first_step)
        finally:
            _leave_task(loop, task)
            if outer is not None:
                _enter_task(loop, outer)
        return task


_NEW, _YIELDED, _RETURNED, _RAISED, _RESUMED = range(5)


class _Started:
    """A coroutine whose first step may have run already (see job_task on 3.11),
    as a coroutine for a task: the task's first ``send`` gives what that step
    yielded, returned or raised; after that, and for a ``throw`` (cancellation)
    before it, everything goes to the coroutine as it would have.

    Not :class:`_Resumed` awaited by an ``async def``: a task cancelled before
    its first step throws into that unstarted wrapper, which ends without
    passing the cancellation on to the coroutine waiting inside it."""

    __slots__ = ("_coroutine", "_outcome", "_state")

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self._coroutine = coroutine
        self._state = _NEW
        self._outcome: Any = None

    def first_step(self) -> None:
        try:
            self._outcome = self._coroutine.send(None)
            self._state = _YIELDED
        except StopIteration as done:
            self._outcome, self._state = done.value, _RETURNED
        except BaseException as exc:  # the task's, raised at its first step
            self._outcome, self._state = exc, _RAISED

    def send(self, value: Any) -> Any:
        state, self._state = self._state, _RESUMED
        if state == _YIELDED:
            return self._outcome
        if state == _RETURNED:
            raise StopIteration(self._outcome)
        if state == _RAISED:
            raise self._outcome
        return self._coroutine.send(value)

    def throw(self, *exc: Any) -> Any:
        state, self._state = self._state, _RESUMED
        if state == _RETURNED:
            raise StopIteration(self._outcome)  # it ended before the throw could reach it
        if state == _RAISED:
            raise self._outcome
        if state == _YIELDED and asyncio.isfuture(self._outcome):
            # A cancel before the task resumed: the task never saw the future the
            # step waits on, which Task.cancel would have cancelled too.
            self._outcome.cancel()
        return self._coroutine.throw(*exc)

    def close(self) -> None:
        self._coroutine.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("a _Started coroutine is driven by its task only")


Coroutine.register(_Started)
