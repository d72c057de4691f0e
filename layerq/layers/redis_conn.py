"""Connections of the Redis layer: clients, bounded retries, scripts by SHA.

redis-py's asyncio connections belong to the event loop that opened them, and
a Channels layer instance outlives loops (``async_to_sync`` makes one per
call), so async clients are kept per loop. Sync code (views) gets plain
redis-py clients with their own thread-safe pools: no event loop per call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import TransportError
from .redis_keys import Host, Script

#: The longest a single BLPOP blocks. Idle receivers re-check delayed messages
#: and expired leases at least this often, and it bounds the socket timeout.
BLOCK_MAX = 1.0

#: Socket reads wait longer than any blocking command, so an idle BLPOP never
#: looks like a dead connection (redis-py 8 defaults to 5 s: channels_redis#422).
SOCKET_TIMEOUT = BLOCK_MAX + 9.0

#: Retries after a connection error; with the jittered backoff below (20 ms
#: doubling, capped at 500 ms) the bound is about 3 s of trying.
RETRIES = 10
_BACKOFF_BASE = 0.02
_BACKOFF_CAP = 0.5

#: One call: ("EVALSHA", script, keys, args) or a plain command (name, *args).
Call = tuple[Any, ...]


def _client_kwargs(host: Host, overrides: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "health_check_interval": 0,
    }
    kwargs.update(overrides)
    kwargs.update(host.kwargs)
    return kwargs


def async_client(host: Host, overrides: dict[str, Any]) -> redis.asyncio.Redis:
    """A redis-py asyncio client for ``host``, for the running loop only."""
    kwargs = _client_kwargs(host, overrides)
    kwargs.setdefault(
        "retry",
        redis.asyncio.retry.Retry(
            ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), RETRIES
        ),
    )
    if host.url is not None:
        return redis.asyncio.Redis.from_url(host.url, **kwargs)
    return redis.asyncio.Redis(**kwargs)


def sync_client(host: Host, overrides: dict[str, Any]) -> redis.Redis:
    """A redis-py sync client for ``host`` with its own (thread-safe) pool."""
    kwargs = _client_kwargs(host, overrides)
    kwargs.setdefault(
        "retry",
        redis.retry.Retry(
            ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), RETRIES
        ),
    )
    if host.url is not None:
        return redis.Redis.from_url(host.url, **kwargs)
    return redis.Redis(**kwargs)


@contextlib.contextmanager
def transport_errors(what: str) -> Iterator[None]:
    """Turn redis-py's connection errors (raised once its retries ran out) into ours."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise TransportError(f"Redis unreachable during {what}: {exc}") from exc


def _queue(pipe: Any, calls: Sequence[Call]) -> None:
    for call in calls:
        if call[0] == "EVALSHA":
            _, script, keys, args = call
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        else:
            pipe.execute_command(*call)


def _scripts(calls: Sequence[Call]) -> list[Script]:
    return [call[1] for call in calls if call[0] == "EVALSHA"]


async def run(client: redis.asyncio.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run ``calls`` in one round trip; load scripts once if Redis lost them.

    A pipeline whose script was missing ran its other commands already; every
    pipeline the layer builds is safe to run twice.
    """
    for first_try in (True, False):
        try:
            if len(calls) == 1:
                call = calls[0]
                if call[0] == "EVALSHA":
                    _, script, keys, args = call
                    return [await client.evalsha(script.sha, len(keys), *keys, *args)]
                return [await client.execute_command(*call)]  # type: ignore[no-untyped-call]
            async with client.pipeline(transaction=False) as pipe:
                _queue(pipe, calls)
                return list(await pipe.execute())
        except NoScriptError:
            if not first_try:
                raise
            for script in _scripts(calls):
                await client.script_load(script.source)
    raise AssertionError("unreachable")


def run_sync(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """:func:`run` for sync clients."""
    for first_try in (True, False):
        try:
            if len(calls) == 1:
                # A pipeline of one costs a third more than the command alone.
                call = calls[0]
                if call[0] == "EVALSHA":
                    _, script, keys, args = call
                    return [client.evalsha(script.sha, len(keys), *keys, *args)]
                return [client.execute_command(*call)]  # type: ignore[no-untyped-call]
            with client.pipeline(transaction=False) as pipe:
                _queue(pipe, calls)
                return list(pipe.execute())
        except NoScriptError:
            if not first_try:
                raise
            for script in _scripts(calls):
                client.script_load(script.source)
    raise AssertionError("unreachable")


class Batcher:
    """Coalesces calls made in the same event-loop turn into one pipeline.

    A worker settling 100 jobs at once would otherwise pay 100 round trips and
    100 pipeline set-ups; here they share one. Each caller still gets its own
    results, and a submitted call whose caller was cancelled still runs
    (settling is idempotent under the lease token, so that is safe).
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._pending: list[tuple[Sequence[Call], asyncio.Future[list[Any]]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._direct = 0

    async def call(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls``: at once when nothing else is under way, else batched.

        A lone caller (a producer sending one job after another) skips the
        batch's task and extra loop turns; callers that arrive while it runs
        are batched together behind it. Cancelling a lone caller cancels its
        command (redis-py then drops the connection), like any direct command.
        """
        if self._pending or self._running or self._direct:
            return await self.submit(calls)
        self._direct += 1
        try:
            return await run(self.client, calls)
        finally:
            self._direct -= 1

    def submit(self, calls: Sequence[Call]) -> asyncio.Future[list[Any]]:
        """Queue ``calls``; the future gets their results."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((calls, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[Sequence[Call], asyncio.Future[list[Any]]]]) -> None:
        flat = [call for calls, _ in batch for call in calls]
        try:
            results = await run(self.client, flat)
        except BaseException as exc:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for calls, future in batch:
            if not future.done():
                future.set_result(results[start : start + len(calls)])
            start += len(calls)

    async def close(self) -> None:
        """Wait for pipelines already sent."""
        await asyncio.gather(*self._running, return_exceptions=True)
