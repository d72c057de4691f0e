"""Connections of the Redis layer: where and how to connect, RESP, faults, sync calls.

redis-py costs more per command than Redis does: a pool checkout, a timeout
context and four or five event-loop turns per asyncio command, which is
most of what a job costs. The layer writes RESP itself (packed and parsed by
hiredis) on connections of its own: the asyncio ones in
:mod:`~layerq.layers.redis_pipe`, the sync ones (views, management commands)
here, one per thread and no event loop per call.

A connection error is retried on a fresh connection with jittered backoff,
bounded (:data:`RETRIES`), then raised as redis-py's ``ConnectionError`` (at
once for a server certificate that fails verification: retrying cannot
help).

Connections follow the host's URL or dict: address or unix socket, username,
password, db, TLS (``rediss://``, ``ssl=True``, ``ssl_ca_certs``, ...) and
``socket_connect_timeout``; the redis-py socket options channels_redis users
pass are accepted and need nothing here; anything else is a ConfigurationError.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
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


def unless_loading(replies: list[Any]) -> list[Any]:
    """``replies``; BusyLoadingError (retried like a lost connection) if Redis was loading."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            error = _error(reply)
            if isinstance(error, BusyLoadingError):
                raise error
    return replies


def pause_after(exc: BaseException, failures: int) -> float:
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
            replies = check(unless_loading(connection.read(len(flight[0]))))
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
                return unless_loading(self._connection().exchange(data, count))
            except (RedisConnectionError, OSError) as exc:
                # A half-read reply cannot be resumed: a fresh connection.
                self._drop()
                failures += 1
                time.sleep(pause_after(exc, failures))

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
