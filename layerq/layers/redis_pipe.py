"""asyncio connections of the Redis layer: pipelined, one writer per connection.

Replies are matched to callers in order (RESP packing, faults and retries
are :mod:`~layerq.layers.redis_conn`'s):

- a call costs one write and one loop turn for its reply;
- calls from many tasks share one connection without waiting for each other
  (pipelining), and a cancelled caller does not break the connection: its
  replies are read and dropped;
- a connection error is retried on a fresh connection, as sync calls are.

Blocking commands (BLPOP, BLMOVE) get connections of their own
(:class:`BlockingPool`): they would hold up every call queued behind them.

asyncio connections belong to the event loop that opened them, and a layer
instance outlives loops (``async_to_sync`` makes one per call), so the layer
keeps them per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import typing
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from .redis_conn import (
    READ_TIMEOUT,
    Call,
    Target,
    check,
    pack,
    pause_after,
    script_loads,
    unless_loading,
)
from .redis_keys import Script

#: Given the replies of a call whose caller gave up (its future was cancelled)
#: once they come, or None when the connection failed first.
Late = Callable[[list[Any] | None], None]
#: gets the replies of a call the moment they are read, before its caller resumes
Early = Callable[[list[Any]], None]


class _Pending:
    """Replies awaited for one write: of a plain call, or of a merged script call."""

    __slots__ = ("early", "future", "late", "left", "members", "replies")

    def __init__(
        self,
        future: asyncio.Future[list[Any]] | None,
        count: int,
        members: list[asyncio.Future[Any]] | None = None,
        late: Late | None = None,
        early: Early | None = None,
    ) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []
        self.members = members
        self.late = late
        self.early = early

    def resolve(self) -> None:
        if self.members is None:
            assert self.future is not None
            if not self.future.done():
                if self.early is not None:
                    self.early(self.replies)
                    if self.future.done():
                        return  # early() cancelled it: the replies are early()'s now
                self.future.set_result(self.replies)
            elif self.late is not None and self.future.cancelled():
                self.late(self.replies)  # its caller gave up: they may still matter
            return
        # A merged call: each member gets its own item of the script's reply
        # (or the error reply they share).
        reply = self.replies[0]
        items = reply if isinstance(reply, list) else []
        if len(items) != len(self.members):
            # An error reply (or one not of this shape): every member gets it,
            # and its caller falls back to a call of its own.
            items = [reply] * len(self.members)
        for member, item in zip(self.members, items, strict=True):
            if not member.done():
                member.set_result(item)

    def fail(self, error: Exception) -> None:
        for future in self.members if self.members is not None else (self.future,):
            if future is not None and not future.done():
                future.set_exception(error)
        if self.late is not None and self.future is not None and self.future.cancelled():
            self.late(None)


class _Merged:
    """Calls of one script on one key made in one loop turn, sent as one call.

    The script takes a run of argument groups, each its length then its
    fields; after it go the members' own follow-up commands (their ``tail``).
    """

    __slots__ = ("args", "key", "members", "pending", "script", "tail")

    def __init__(self, script: Script, key: str) -> None:
        self.script = script
        self.key = key
        self.args: list[Any] = []
        self.tail: list[Call] = []
        self.members: list[asyncio.Future[Any]] = []
        #: the script's reply, then one per tail command
        self.pending = _Pending(None, 1, self.members)

    def add(self, group: Sequence[Any], tail: Sequence[Call], future: asyncio.Future[Any]) -> None:
        self.args.append(len(group))
        self.args += group
        self.tail += tail
        self.pending.left += len(tail)
        self.members.append(future)

    def pack(self) -> bytes:
        return pack([("EVALSHA", self.script, [self.key], self.args), *self.tail])


class _Protocol(asyncio.Protocol):
    """One connection: writes pipelines, hands replies back in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: deque[_Pending] = deque()
        self.closed = asyncio.get_running_loop().create_future()
        self.last_read = time.monotonic()
        self.watchdog: asyncio.TimerHandle | None = None
        #: writes held until the end of this loop turn, then sent as one
        self.outbox: list[bytes | _Merged] = []
        #: the merged calls in the outbox, by script and key
        self.merging: dict[tuple[str, str], _Merged] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports (uvicorn's
        # default loop) have the methods but not the asyncio base classes.
        self.transport = typing.cast(asyncio.Transport, transport)

    def send(
        self, data: bytes, count: int, late: Late | None = None, early: Early | None = None
    ) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue(loop, data, _Pending(future, count, late=late, early=early))
        return future

    def merge(
        self, script: Script, key: str, group: Sequence[Any], tail: Sequence[Call]
    ) -> asyncio.Future[Any]:
        """Add ``group`` to this turn's call of ``script`` on ``key``.

        The future of this group's item of the script's reply (a ReplyError
        when the call failed); ``tail`` is sent after the call, unread.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        merged = self.merging.get((script.sha, key))
        if merged is not None:
            merged.add(group, tail, future)
            return future
        merged = _Merged(script, key)
        merged.add(group, tail, future)
        if self._queue(loop, merged, merged.pending):
            self.merging[(script.sha, key)] = merged  # later calls of this turn join it
        return future

    def _queue(
        self, loop: asyncio.AbstractEventLoop, data: bytes | _Merged, pending: _Pending
    ) -> bool:
        """Write ``data`` now when nothing else waits, else at the end of the turn.

        True when it waits in the outbox.
        """
        if self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("connection closed")
        if not self.pending:
            self.last_read = time.monotonic()  # the read watchdog counts from here
        held = bool(self.pending or self.outbox)
        if not held:
            # A lone caller (nothing in flight, nothing queued) is written at
            # once: a producer sending job after job pays no extra loop turn.
            self.transport.write(data if isinstance(data, bytes) else data.pack())
        else:
            # Under load, calls of one loop turn share a write (one syscall,
            # and Redis answers them in one packet).
            if not self.outbox:
                loop.call_soon(self._flush)
            self.outbox.append(data)
        self.pending.append(pending)
        if self.watchdog is None:
            self.watchdog = loop.call_later(READ_TIMEOUT, self._check)
        return held

    def _flush(self) -> None:
        outbox, self.outbox = self.outbox, []
        self.merging.clear()
        data = b"".join(item if isinstance(item, bytes) else item.pack() for item in outbox)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        # else connection_lost has failed (or will fail) every caller waiting on it

    def _check(self) -> None:
        self.watchdog = None
        if not self.pending or self.transport is None:
            return
        idle = time.monotonic() - self.last_read
        if idle >= READ_TIMEOUT:
            self.transport.abort()  # connection_lost fails the callers
            return
        self.watchdog = asyncio.get_running_loop().call_later(READ_TIMEOUT - idle, self._check)

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        self.reader.feed(data)
        try:
            while True:
                reply = self.reader.gets()
                if reply is False:
                    return
                waiting = self.pending[0]
                waiting.replies.append(reply)
                waiting.left -= 1
                if waiting.left == 0:
                    self.pending.popleft()
                    waiting.resolve()
        except (hiredis.ProtocolError, IndexError) as exc:
            if self.transport is not None:
                self.transport.abort()
            self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))
        if self.watchdog is not None:
            self.watchdog.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: Exception) -> None:
        self.outbox.clear()
        self.merging.clear()
        while self.pending:
            self.pending.popleft().fail(error)

    @property
    def idle(self) -> bool:
        return not self.pending

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class AsyncPipe:
    """A pipelined connection to one host, opened on first use, reopened on loss."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        #: set by close(): a closed pipe opens no connection, one it could never close
        self._closed = False

    def submit(
        self, calls: Sequence[Call], late: Late | None = None, early: Early | None = None
    ) -> asyncio.Future[list[Any]] | None:
        """Queue ``calls`` on the open connection: a future of their raw replies.

        No task, no retry, errors as values (see :func:`check`); None when no
        connection is open (:meth:`call` opens one). For the hot path of a
        worker, where :meth:`call`'s coroutine would be one more task.
        ``late`` gets the replies if the future was cancelled before they came;
        ``early`` gets them as they are read, unless it was.
        """
        protocol = self._open_protocol()
        return None if protocol is None else protocol.send(pack(calls), len(calls), late, early)

    def merge(
        self, script: Script, key: str, group: Sequence[Any], tail: Sequence[Call] = ()
    ) -> asyncio.Future[Any] | None:
        """Join this loop turn's one call of ``script`` on ``key`` (see _Merged).

        The future of this group's reply item, errors as values; None when no
        connection is open. No retry: on a fault, use :meth:`call`.
        """
        protocol = self._open_protocol()
        return None if protocol is None else protocol.merge(script, key, group, tail)

    def _open_protocol(self) -> _Protocol | None:
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            return None
        return protocol

    async def call(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` in one round trip; load scripts once if Redis lost them."""
        try:
            return check(await self.raw(pack(calls), len(calls)))
        except NoScriptError:
            loads = script_loads(calls)
            check(await self.raw(pack(loads), len(loads)))
            return check(await self.raw(pack(calls), len(calls)))

    async def raw(self, data: bytes, count: int) -> list[Any]:
        """Send packed commands; their replies (errors as values), retried on faults."""
        failures = 0
        while True:
            if self._closed:
                raise RedisConnectionError("connection closed")
            protocol = self._protocol
            try:
                if protocol is None or protocol.transport is None:
                    protocol = await self._connect()
                return unless_loading(await protocol.send(data, count))
            except (RedisConnectionError, OSError) as exc:  # OSError: timeouts, TLS too
                if protocol is not None and protocol is self._protocol:
                    self._protocol = None
                    protocol.close()
                failures += 1
                await asyncio.sleep(pause_after(exc, failures))

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        return protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        target = self.target
        async with asyncio.timeout(target.connect_timeout):
            if target.path is not None:
                _, protocol = await loop.create_unix_connection(
                    _Protocol, target.path, ssl=target.tls
                )
            else:
                _, protocol = await loop.create_connection(
                    _Protocol,
                    target.host,
                    target.port,
                    ssl=target.tls,
                    server_hostname=target.host if target.tls else None,
                )
        try:
            setup = target.setup()
            if setup:
                check(await protocol.send(pack(setup), len(setup)))
            if self._closed:  # close() came while this connection was opening
                raise RedisConnectionError("connection closed")
        except BaseException:
            protocol.close()
            raise
        self._protocol = protocol
        return protocol

    @property
    def idle(self) -> bool:
        """True when no replies are outstanding (a blocking pipe may be reused)."""
        return self._protocol is None or self._protocol.idle

    def shut(self) -> None:
        """Close for good, without waiting for the connection to be gone."""
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()

    async def close(self) -> None:
        """Close for good; back when the connection is gone (or after a second)."""
        protocol = self._protocol
        self.shut()
        if protocol is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(protocol.closed, 1.0)


class BlockingPool:
    """Connections for blocking commands, one per concurrent blocker, reused when idle."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._free: list[AsyncPipe] = []
        self._busy: set[AsyncPipe] = set()
        #: waits for the last reply of a pipe that is to close
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def acquire(self) -> AsyncPipe:
        """A pipe no one else is blocking on; give it back with :meth:`release`."""
        if self._closed:
            raise RedisConnectionError("connection closed")
        pipe = self._free.pop() if self._free else AsyncPipe(self.target)
        self._busy.add(pipe)
        return pipe

    def release(self, pipe: AsyncPipe) -> None:
        """Back to the pool if idle; else closed once its reply came (or timed out)."""
        self._busy.discard(pipe)
        # A caller cancelled mid-block leaves a reply in flight: that pipe is
        # not reused, or the next blocker would wait behind the old block.
        if pipe.idle and len(self._free) < 8 and not self._closed:
            self._free.append(pipe)
        else:
            # The pipe shuts when the wait ends, however it ends: a task
            # cancelled before its first step (by close(), or by asyncio.run
            # cancelling what is left) never runs a finally of its own.
            task = asyncio.ensure_future(_until_idle(pipe))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            task.add_done_callback(lambda _: pipe.shut())

    @contextlib.asynccontextmanager
    async def pipe(self) -> AsyncIterator[AsyncPipe]:
        """:meth:`acquire` and :meth:`release` around a block."""
        pipe = self.acquire()
        try:
            yield pipe
        finally:
            self.release(pipe)

    async def call(self, calls: Sequence[Call]) -> list[Any]:
        """:meth:`AsyncPipe.call` on a pipe of the pool, for calls that block."""
        async with self.pipe() as pipe:
            return await pipe.call(calls)

    async def close(self) -> None:
        self._closed = True
        pipes = [*self._free, *self._busy]
        self._free, self._busy = [], set()
        for task in self._closing:
            task.cancel()
        await asyncio.gather(
            *self._closing, *(pipe.close() for pipe in pipes), return_exceptions=True
        )


async def _until_idle(pipe: AsyncPipe) -> None:
    """Until ``pipe`` has had its replies, or READ_TIMEOUT has passed."""
    for _ in range(int(READ_TIMEOUT / 0.05)):
        if pipe.idle:
            return
        await asyncio.sleep(0.05)
