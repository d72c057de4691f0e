"""Connections of the Redis layer: pipelined, retried, one writer per connection.

redis-py costs more per command than Redis does: a pool checkout, a timeout
context and four or five event-loop turns per asyncio command, which is
most of what a job costs. The layer writes RESP itself (packed and parsed by
hiredis) on connections of its own and matches replies to callers in order:

- a call costs one write and one loop turn for its reply;
- calls from many tasks share one connection without waiting for each other
  (pipelining), and a cancelled caller does not break the connection: its
  replies are read and dropped;
- a connection error is retried on a fresh connection with jittered backoff,
  bounded (:data:`RETRIES`), then raised as redis-py's ``ConnectionError``
  (at once for a server certificate that fails verification: retrying cannot
  help).

Blocking commands (BLPOP, BLMOVE) get connections of their own
(:class:`BlockingPool`): they would hold up every call queued behind them.

Connections follow the host's URL or dict: address or unix socket, username,
password, db, TLS (``rediss://``, ``ssl=True``, ``ssl_ca_certs``, ...) and
``socket_connect_timeout``; the redis-py socket options channels_redis users
pass are accepted and need nothing here; anything else is a ConfigurationError.

asyncio connections belong to the event loop that opened them, and a layer
instance outlives loops (``async_to_sync`` makes one per call), so the layer
keeps them per loop. Sync code (views) gets a connection per thread: no event
loop per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
import struct
import threading
import time
import typing
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import BusyLoadingError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigurationError, TransportError
from .redis_keys import Host, Script

#: The longest a single blocking command blocks. Idle receivers re-check
#: delayed messages and expired leases at least this often.
BLOCK_MAX = 1.0

#: Retries after a connection error; with the jittered backoff (20 ms
#: doubling, capped at 500 ms) the bound is about 3 s of trying.
RETRIES = 10
_BACKOFF_BASE = 0.02
_BACKOFF_CAP = 0.5

#: A connection with replies outstanding and nothing read for this long is
#: taken for dead (a blocking command never blocks longer than BLOCK_MAX).
READ_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 2.0

#: One call: ("EVALSHA", script, keys, args) or a plain command (name, *args).
Call = tuple[Any, ...]

#: Host options the connections use (see the module docstring).
_USED = {
    "host", "port", "path", "db", "username", "password", "socket_connect_timeout",
    "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "connection_class",
}  # fmt: skip
#: redis-py options with nothing to do here: timeouts, keepalive and retries are ours.
_IGNORED = {
    "socket_timeout", "socket_keepalive", "socket_keepalive_options", "health_check_interval",
    "retry_on_timeout", "retry", "max_connections", "encoding", "client_name",
}  # fmt: skip


class transport_errors:  # lower case: used as a function, ``with transport_errors("send")``
    """Turn connection errors (raised once the retries ran out) into TransportError.

    A class, not a ``contextlib.contextmanager``: it wraps every call of the
    layer, and a generator-based one costs several times more per use.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if kind is not None and issubclass(kind, (RedisConnectionError, RedisTimeoutError)):
            raise TransportError(f"Redis unreachable during {self.what}: {exc}") from exc


def backoff(failures: int) -> float:
    """The jittered pause before retry number ``failures`` (1, 2, ...)."""
    return random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**failures))


def pack(calls: Sequence[Call]) -> bytes:
    """The RESP bytes of ``calls``."""
    out = []
    for call in calls:
        if call[0] == "EVALSHA":
            _, script, keys, args = call
            out.append(hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)))
        else:
            out.append(hiredis.pack_command(call))
    return b"".join(out)


def _error(reply: hiredis.ReplyError) -> RedisError:
    """redis-py's class for a Redis error reply, as callers expect."""
    message = str(reply)
    if message.startswith("LOADING"):
        # A restarted Redis reading its data: a fault to wait out, as redis-py
        # does (BusyLoadingError is a ConnectionError).
        return BusyLoadingError(message)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


def check(replies: list[Any]) -> list[Any]:
    """``replies`` with Redis errors raised."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise _error(reply)
    return replies


def _unless_loading(replies: list[Any]) -> list[Any]:
    """``replies``; BusyLoadingError (retried like a lost connection) if Redis was loading."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            error = _error(reply)
            if isinstance(error, BusyLoadingError):
                raise error
    return replies


def _pause_after(exc: BaseException, failures: int) -> float:
    """The pause before retrying after connection fault number ``failures``.

    Past the bound, and at once for a server certificate that fails
    verification (retrying cannot help), it raises instead: ``exc`` itself,
    or a redis-py ConnectionError for an OSError.
    """
    if failures > RETRIES or isinstance(exc, ssl.SSLCertVerificationError):
        if isinstance(exc, RedisConnectionError):
            raise exc
        raise RedisConnectionError(f"Redis unreachable: {exc!r}") from exc
    return backoff(failures)


def script_loads(calls: Sequence[Call]) -> list[Call]:
    """SCRIPT LOAD of each script ``calls`` run (for Redis that lost them)."""
    return [("SCRIPT", "LOAD", call[1].source) for call in calls if call[0] == "EVALSHA"]


class Target:
    """Where and how to connect, from a layer host and its connection options."""

    def __init__(
        self, host: Host, overrides: dict[str, Any], scripts: Sequence[Script] = ()
    ) -> None:
        #: loaded as each connection opens: a restarted Redis has none, and a
        #: NOSCRIPT would send a call twice, the second time behind later calls
        self.scripts = list(scripts)
        options = {**overrides, **host.kwargs}
        if host.url is not None:
            options.update(parse_url(host.url))  # type: ignore[no-untyped-call]
        unknown = set(options) - _USED - _IGNORED
        if unknown:
            raise ConfigurationError(
                f"RedisChannelLayer does not understand the connection options {sorted(unknown)}"
            )
        connection_class = options.pop("connection_class", None)
        self.path: str | None = options.get("path")
        self.host: str = options.get("host", "localhost")
        self.port = int(options.get("port", 6379))
        self.db = int(options.get("db") or 0)
        self.username: str | None = options.get("username")
        self.password: str | None = options.get("password")
        self.connect_timeout = float(options.get("socket_connect_timeout") or _CONNECT_TIMEOUT)
        use_tls = bool(options.get("ssl")) or (
            connection_class is not None and "SSL" in connection_class.__name__
        )
        self.tls = _tls_context(options) if use_tls else None

    def setup(self) -> list[Call]:
        """AUTH, SELECT and SCRIPT LOAD, as the connection's first commands."""
        calls: list[Call] = []
        if self.password is not None:
            user = (self.username,) if self.username else ()
            calls.append(("AUTH", *user, self.password))
        if self.db:
            calls.append(("SELECT", self.db))
        calls += [("SCRIPT", "LOAD", script.source) for script in self.scripts]
        return calls

    def open_socket(self) -> socket.socket:
        """A connected (blocking) socket, for sync callers."""
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            sock.connect(self.path)
        else:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        # Blocking, with the kernel keeping the read timeout: a Python socket
        # timeout costs a poll() before every send and every recv. A read that
        # times out raises OSError (EAGAIN), a fault like a lost connection.
        sock.settimeout(None)
        seconds = int(READ_TIMEOUT)
        limit = struct.pack("ll", seconds, int((READ_TIMEOUT - seconds) * 1e6))  # a timeval
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        return sock


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    certfile = options.get("ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile, options.get("ssl_keyfile"))
    requirement = options.get("ssl_cert_reqs", "required")
    if requirement in ("none", None, ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# --- asyncio --------------------------------------------------------------------------


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
                return _unless_loading(await protocol.send(data, count))
            except (RedisConnectionError, OSError) as exc:  # OSError: timeouts, TLS too
                if protocol is not None and protocol is self._protocol:
                    self._protocol = None
                    protocol.close()
                failures += 1
                await asyncio.sleep(_pause_after(exc, failures))

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


# --- sync -------------------------------------------------------------------------------


class _SyncConnection:
    sock: socket.socket | None = None

    def __init__(self, target: Target) -> None:
        self.pid = os.getpid()
        self.reader = hiredis.Reader()
        self.sock = target.open_socket()
        setup = target.setup()
        if setup:
            try:
                check(self.exchange(pack(setup), len(setup)))
            except BaseException:
                self.close()
                raise

    def exchange(self, data: bytes, count: int) -> list[Any]:
        self.write(data)
        return self.read(count)

    def write(self, data: bytes) -> None:
        if self.sock is None:
            raise RedisConnectionError("connection closed")
        self.sock.sendall(data)

    def read(self, count: int) -> list[Any]:
        """The next ``count`` replies (errors as values)."""
        sock = self.sock
        if sock is None:
            raise RedisConnectionError("connection closed")
        replies: list[Any] = []
        while len(replies) < count:
            reply = self.reader.gets()
            if reply is False:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RedisConnectionError("connection to Redis closed")
                self.reader.feed(chunk)
                continue
            replies.append(reply)
        return replies

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()  # (plain: __del__ may call this while the interpreter exits)

    def __del__(self) -> None:
        # The connection of a finished thread goes with its thread-local.
        self.close()


class SyncPipe:
    """:class:`AsyncPipe` for sync callers: one connection per thread (and process)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._local = threading.local()
        self._lock = threading.Lock()
        #: every thread's connection, for close(); a finished thread's drops out
        self._connections: weakref.WeakSet[_SyncConnection] = weakref.WeakSet()

    def call(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` in one round trip; load scripts once if Redis lost them."""
        try:
            return check(self.raw(pack(calls), len(calls)))
        except NoScriptError:
            loads = script_loads(calls)
            check(self.raw(pack(loads), len(loads)))
            return check(self.raw(pack(calls), len(calls)))

    def call_each(self, batches: Iterable[Sequence[Call]]) -> Iterator[list[Any]]:
        """:meth:`call` for each batch in order, pipelined: the replies of each.

        A batch is written before the replies of the one before it are read,
        so Redis runs one while the caller builds the next (``batches`` may be
        a generator). After a fault, the batches not yet answered run again
        one by one through :meth:`call`, with its retries: they must be safe
        to run twice. The caller must not use this pipe while iterating.
        """
        source = iter(batches)
        flight: deque[Sequence[Call]] = deque()

        def oldest() -> list[Any]:
            # The replies of the oldest batch in flight; it leaves the flight
            # only once they are read and free of errors.
            replies = check(_unless_loading(connection.read(len(flight[0]))))
            flight.popleft()
            return replies

        try:
            connection = self._connection()
            for batch in source:
                flight.append(batch)  # before the write: a failed write is run again too
                connection.write(pack(batch))
                if len(flight) > 1:
                    yield oldest()
            while flight:
                yield oldest()
        except (RedisConnectionError, OSError, NoScriptError):
            self._drop()  # replies may still be on their way: a fresh connection
            unanswered, flight = [*flight], deque()
            for batch in [*unanswered, *source]:
                yield self.call(batch)
        finally:
            if flight:
                self._drop()  # given up with replies unread (an error, or a close)

    def raw(self, data: bytes, count: int) -> list[Any]:
        failures = 0
        while True:
            try:
                return _unless_loading(self._connection().exchange(data, count))
            except (RedisConnectionError, OSError) as exc:
                # A half-read reply cannot be resumed: a fresh connection.
                self._drop()
                failures += 1
                time.sleep(_pause_after(exc, failures))

    def _connection(self) -> _SyncConnection:
        """This thread's connection, opened when it has none (or it was forked)."""
        connection: _SyncConnection | None = getattr(self._local, "connection", None)
        if connection is None or connection.pid != os.getpid():
            connection = self._open()
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()

    def _open(self) -> _SyncConnection:
        connection = _SyncConnection(self.target)
        self._local.connection = connection
        with self._lock:
            self._connections.add(connection)
        return connection

    def close(self) -> None:
        """Close every thread's connection (threads reopen on their next call)."""
        with self._lock:
            connections, self._connections = list(self._connections), weakref.WeakSet()
        for connection in connections:
            connection.close()
        self._local = threading.local()
