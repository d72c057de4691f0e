"""SQLiteChannelLayer: the embedded, zero-setup layerq layer.

A complete Channels layer (websockets can use it too) and a durable queue,
shared by every process on one machine through one SQLite file. Sync callers
(Django views) use the connection of their own thread directly; async callers
go through a small thread pool so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import sqlite3
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from .. import clock
from ..conf import get_settings
from ..errors import ConfigurationError, QueueFull
from ..events import ENVELOPE_KEY
from ..jobs import JobRecord, JobStatus
from .base import DeadLetter, Delivery, QueueLayer
from .sqlite_db import Database
from .sqlite_wait import Waiters

T = TypeVar("T")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
_decode_any = msgspec.msgpack.Decoder().decode

_RECORD_COLUMNS = (
    "id, type, channel, status, attempt, max_attempts, enqueued_at, started_at, finished_at,"
    " progress, progress_message, result, error_type, error_message"
)
#: how often expired messages, groups and records are swept, at most
_SWEEP_EVERY = 5.0


def _job_id(message: dict[str, Any]) -> str | None:
    envelope = message.get(ENVELOPE_KEY)
    job_id = envelope.get("id") if isinstance(envelope, dict) else None
    return job_id if isinstance(job_id, str) else None


def _record(row: tuple[Any, ...]) -> JobRecord:
    (id_, type_, channel, status, attempt, max_attempts, enqueued, started, finished,
     progress, progress_message, result, error_type, error_message) = row  # fmt: skip
    return JobRecord(
        id=id_, type=type_, channel=channel, status=JobStatus(status), attempt=attempt,
        max_attempts=max_attempts, enqueued_at=enqueued, started_at=started,
        finished_at=finished, progress=progress, progress_message=progress_message,
        result=None if result is None else _decode_any(result),
        error_type=error_type, error_message=error_message,
    )  # fmt: skip


class SQLiteChannelLayer(QueueLayer):
    """Channel layer and job queue in one SQLite file (``CONFIG: {"path": ...}``)."""

    def __init__(
        self,
        path: str | Path | None = None,
        expiry: float = 60,
        group_expiry: int = 86400,
        capacity: int = 100_000,
        channel_capacity: dict[str, int] | None = None,
        busy_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ConfigurationError(f"SQLiteChannelLayer: unknown CONFIG keys {sorted(kwargs)}")
        if path is None or str(path) in ("", ":memory:"):
            raise ConfigurationError(
                "SQLiteChannelLayer needs CONFIG['path'], a file every process can open"
            )
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.group_expiry = group_expiry
        self.db = Database(path, busy_timeout=busy_timeout)
        self.client_prefix = secrets.token_hex(6)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="layerq-sqlite")
        self._waiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Waiters] = (
            weakref.WeakKeyDictionary()
        )
        # Messages popped for a receive() that was cancelled meanwhile: the next
        # receive() on the channel gets them, so cancellation loses nothing.
        self._buffers: dict[str, deque[dict[str, Any]]] = {}
        self._last_sweep = 0.0

    def __repr__(self) -> str:
        return f"<SQLiteChannelLayer {self.db.path}>"

    # --- plumbing ------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _waiting(self) -> Waiters:
        loop = asyncio.get_running_loop()
        waiters = self._waiters.get(loop)
        if waiters is None:
            waiters = self._waiters[loop] = Waiters(self.db.connect)
        return waiters

    def _insert(
        self, db: sqlite3.Connection, channel: str, message: dict[str, Any], delay: float = 0.0
    ) -> bool:
        """Store one message unless the channel is full; False when full."""
        row = db.execute("SELECT size FROM channel_sizes WHERE channel = ?", (channel,)).fetchone()
        if row is not None and row[0] >= self.get_capacity(channel):
            return False
        now = clock.now()
        job_id = _job_id(message)
        expires = None if job_id is not None else now + self.expiry
        db.execute(
            "INSERT INTO messages (channel, body, ready_at, expires_at, job_id) VALUES (?,?,?,?,?)",
            (channel, _encode(message), now + delay, expires, job_id),
        )
        return True

    def _sweep(self, db: sqlite3.Connection) -> None:
        now = clock.now()
        if now - self._last_sweep < _SWEEP_EVERY:
            return
        self._last_sweep = now
        db.execute("DELETE FROM messages WHERE expires_at < ?", (now,))
        db.execute("DELETE FROM groups WHERE expires_at < ?", (now,))
        db.execute("DELETE FROM jobs WHERE expires_at < ?", (now,))

    # --- the Channels layer spec --------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; QueueFull (a ChannelFull) at capacity."""
        self.require_valid_channel_name(channel)
        if not isinstance(message, dict) or "__asgi_channel__" in message:
            raise TypeError("message must be a dict without __asgi_channel__")
        await self._run(functools.partial(self._send_sync, channel, message))

    def _send_sync(self, channel: str, message: dict[str, Any]) -> None:
        if not self.db.write(lambda db: self._insert(db, channel, message)):
            raise QueueFull(f"channel {channel!r} is at capacity")

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on ``channel``, at most once; waits until there is one."""
        self.require_valid_channel_name(channel)
        async with self._waiting().subscribe([channel]) as ready:
            while True:
                ready.clear()
                buffered = self._buffers.get(channel)
                if buffered:
                    return buffered.popleft()
                future = asyncio.get_running_loop().run_in_executor(
                    self._pool, functools.partial(self._pop, channel)
                )
                try:
                    message = await asyncio.shield(future)
                except asyncio.CancelledError:
                    future.add_done_callback(functools.partial(self._keep, channel))
                    raise
                if message is not None:
                    return message
                await ready.wait()

    def _keep(self, channel: str, future: asyncio.Future[dict[str, Any] | None]) -> None:
        """Buffer what a cancelled receive() popped, and wake the next receiver."""
        if not future.cancelled() and future.exception() is None:
            message = future.result()
            if message is not None:
                self._buffers.setdefault(channel, deque()).append(message)
                self._waiting().wake([channel])

    def _pop(self, channel: str) -> dict[str, Any] | None:
        def pop(db: sqlite3.Connection) -> bytes | None:
            self._sweep(db)
            now = clock.now()
            row = db.execute(
                "DELETE FROM messages WHERE id = (SELECT id FROM messages WHERE channel = ?"
                " AND ready_at <= ? AND (expires_at IS NULL OR expires_at > ?)"
                " ORDER BY ready_at, id LIMIT 1) RETURNING body",
                (channel, now, now),
            ).fetchone()
            return None if row is None else bytes(row[0])

        body = self.db.write(pop)
        return None if body is None else _decode(body)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel name."""
        return f"{prefix}.{self.client_prefix}!{secrets.token_hex(8)}"

    async def flush(self) -> None:
        """Delete every message, group, job record and dead letter in the file."""

        def flush(db: sqlite3.Connection) -> None:
            for table in ("messages", "channel_sizes", "groups", "jobs", "dead_letters"):
                db.execute(f"DELETE FROM {table}")

        self._buffers.clear()
        await self._run(functools.partial(self.db.write, flush))

    async def close(self) -> None:
        """Nothing to release that the process exit would not; for API parity."""

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._run(functools.partial(self.db.write, lambda db: db.execute(
            "INSERT INTO groups (grp, channel, expires_at) VALUES (?,?,?) ON CONFLICT"
            " (grp, channel) DO UPDATE SET expires_at = excluded.expires_at",
            (group, channel, clock.now() + self.group_expiry),
        )))  # fmt: skip

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._run(functools.partial(self.db.write, lambda db: db.execute(
            "DELETE FROM groups WHERE grp = ? AND channel = ?", (group, channel)
        )))  # fmt: skip

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send to every member of ``group``; full members miss it (never raises for that)."""
        self.require_valid_group_name(group)
        await self._run(functools.partial(self.group_send_sync, group, message))

    def group_send_sync(self, group: str, message: dict[str, Any]) -> None:
        """:meth:`group_send` for sync code."""

        def send(db: sqlite3.Connection) -> None:
            members = db.execute(
                "SELECT channel FROM groups WHERE grp = ? AND expires_at > ?", (group, clock.now())
            ).fetchall()
            for (channel,) in members:
                self._insert(db, channel, message)

        self.db.write(send)

    # --- producer side of the queue -----------------------------------------

    async def enqueue(
        self, channel: str, message: dict[str, Any], record: JobRecord, delay: float = 0.0
    ) -> None:
        """Store a job message and its queued record in one transaction."""
        await self._run(functools.partial(self.enqueue_sync, channel, message, record, delay))

    def enqueue_sync(
        self, channel: str, message: dict[str, Any], record: JobRecord, delay: float = 0.0
    ) -> None:
        """:meth:`enqueue` without an event loop, for sync views."""
        self.require_valid_channel_name(channel)

        def enqueue(db: sqlite3.Connection) -> bool:
            if not self._insert(db, channel, message, delay):
                return False
            db.execute(
                "INSERT INTO jobs (id, type, channel, status, max_attempts, enqueued_at)"
                " VALUES (?,?,?,?,?,?)",
                (record.id, record.type, channel, record.status.value, record.max_attempts,
                 record.enqueued_at),
            )  # fmt: skip
            return True

        if not self.db.write(enqueue):
            raise QueueFull(f"channel {channel!r} is at capacity")

    # --- worker side -------------------------------------------------------------

    async def claim(
        self, channels: Sequence[str], limit: int, lease: float, wait: float
    ) -> list[Delivery]:
        """Lease up to ``limit`` ready messages, waiting up to ``wait`` for the first."""
        for channel in channels:
            self.require_valid_channel_name(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        claim = functools.partial(self._claim, list(channels), limit, lease)
        async with self._waiting().subscribe(channels) as ready:
            while True:
                ready.clear()
                # A lease taken after the caller gave up is harmless: it expires
                # and the message is delivered again, so no shield is needed.
                deliveries = await self._run(claim)
                remaining = deadline - loop.time()
                if deliveries or remaining <= 0:
                    return deliveries
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), remaining)

    def _claim(self, channels: list[str], limit: int, lease: float) -> list[Delivery]:
        token = secrets.token_hex(8)

        def claim(db: sqlite3.Connection) -> list[Delivery]:
            self._sweep(db)
            now = clock.now()
            marks = ",".join("?" * len(channels))
            rows = db.execute(
                f"SELECT id, channel, body, attempts, token, job_id FROM messages"
                f" WHERE channel IN ({marks}) AND ready_at <= ?"
                f" AND (expires_at IS NULL OR expires_at > ?) ORDER BY ready_at, id LIMIT ?",
                (*channels, now, now, limit),
            ).fetchall()
            deliveries = []
            for id_, channel, body, attempts, previous, job_id in rows:
                try:
                    message = _decode(body)
                except msgspec.DecodeError:
                    message = {"__undecodable__": bytes(body).hex()[:200]}
                deliveries.append(Delivery(
                    id=str(id_), channel=channel, message=message, attempt=attempts + 1,
                    token=token, reclaimed=previous is not None, job_id=job_id,
                ))  # fmt: skip
            db.executemany(
                "UPDATE messages SET attempts = attempts + 1, token = ?, ready_at = ? WHERE id = ?",
                [(token, now + lease, int(d.id)) for d in deliveries],
            )
            db.executemany(
                "UPDATE jobs SET status = 'running', attempt = ?, started_at = ? WHERE id = ?",
                [(d.attempt, now, d.job_id) for d in deliveries if d.job_id],
            )
            return deliveries

        return self.db.write(claim)

    async def extend(self, deliveries: Sequence[Delivery], lease: float) -> None:
        """Heartbeat: leases of ``deliveries`` end ``lease`` seconds from now."""
        rows = [(int(d.id), d.token) for d in deliveries]

        def extend(db: sqlite3.Connection) -> None:
            until = clock.now() + lease
            db.executemany(
                "UPDATE messages SET ready_at = ? WHERE id = ? AND token = ?",
                [(until, id_, token) for id_, token in rows],
            )

        await self._run(functools.partial(self.db.write, extend))

    def _settle(
        self, delivery: Delivery, message_sql: str, message_args: tuple[Any, ...],
        job_sql: str | None, job_args: tuple[Any, ...],
    ) -> bool:  # fmt: skip
        """Change the message (only under our lease) and then its record, atomically."""

        def settle(db: sqlite3.Connection) -> bool:
            changed = db.execute(
                message_sql, (*message_args, int(delivery.id), delivery.token)
            ).rowcount
            if not changed:
                return False
            if job_sql is not None and delivery.job_id is not None:
                db.execute(job_sql, (*job_args, delivery.job_id))
            return True

        return self.db.write(settle)

    async def ack(self, delivery: Delivery, result: Any, ttl: float) -> bool:
        """Done: remove the message, record succeeded with ``result``."""
        now = clock.now()
        return await self._run(functools.partial(
            self._settle, delivery,
            "DELETE FROM messages WHERE id = ? AND token = ?", (),
            "UPDATE jobs SET status = 'succeeded', result = ?, finished_at = ?, progress = 1.0,"
            " error_type = NULL, error_message = NULL, expires_at = ? WHERE id = ?",
            (_encode(result), now, now + ttl),
        ))  # fmt: skip

    async def retry(
        self, delivery: Delivery, delay: float, error_type: str, error_message: str
    ) -> bool:
        """Return the message, ready after ``delay``; record retrying."""
        return await self._run(functools.partial(
            self._settle, delivery,
            "UPDATE messages SET token = NULL, ready_at = ? WHERE id = ? AND token = ?",
            (clock.now() + delay,),
            "UPDATE jobs SET status = 'retrying', error_type = ?, error_message = ? WHERE id = ?",
            (error_type, error_message),
        ))  # fmt: skip

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Return unrun messages now; the attempt they took is given back."""
        for delivery in deliveries:
            await self._run(functools.partial(
                self._settle, delivery,
                "UPDATE messages SET token = NULL, ready_at = ?, attempts = attempts - 1"
                " WHERE id = ? AND token = ?", (clock.now(),),
                "UPDATE jobs SET status = 'queued', attempt = attempt - 1 WHERE id = ?", (),
            ))  # fmt: skip

    async def dead_letter(
        self, delivery: Delivery, reason: str, error_type: str, error_message: str, ttl: float
    ) -> bool:
        """Move the message to the dead letters; record failed."""
        now = clock.now()

        def bury(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "DELETE FROM messages WHERE id = ? AND token = ? RETURNING channel, body",
                (int(delivery.id), delivery.token),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "INSERT INTO dead_letters (channel, body, reason, failed_at, job_id)"
                " VALUES (?,?,?,?,?)",
                (row[0], row[1], reason, now, delivery.job_id),
            )
            if delivery.job_id is not None:
                db.execute(
                    "UPDATE jobs SET status = 'failed', error_type = ?, error_message = ?,"
                    " finished_at = ?, expires_at = ? WHERE id = ?",
                    (error_type, error_message, now, now + ttl, delivery.job_id),
                )
            return True

        return await self._run(functools.partial(self.db.write, bury))

    # --- records --------------------------------------------------------------

    async def set_progress(self, job_id: str, progress: float, message: str | None) -> None:
        """Store a running job's progress."""
        await self._run(functools.partial(self.db.write, lambda db: db.execute(
            "UPDATE jobs SET progress = ?, progress_message = ? WHERE id = ?",
            (progress, message, job_id),
        )))  # fmt: skip

    async def get_record(self, job_id: str) -> JobRecord | None:
        """The job's record, or None."""
        return await self._run(functools.partial(self.get_record_sync, job_id))

    def get_record_sync(self, job_id: str) -> JobRecord | None:
        """:meth:`get_record` for sync code."""
        rows = self.db.read(
            f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE id = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (job_id, clock.now()),
        )
        return _record(rows[0]) if rows else None

    async def cancel(self, job_id: str) -> bool:
        """Remove a job no worker holds; record cancelled."""
        return await self._run(functools.partial(self.cancel_sync, job_id))

    def cancel_sync(self, job_id: str) -> bool:
        """:meth:`cancel` for sync code."""
        ttl = get_settings().result_ttl

        def cancel(db: sqlite3.Connection) -> bool:
            now = clock.now()
            removed = db.execute(
                "DELETE FROM messages WHERE job_id = ? AND (token IS NULL OR ready_at <= ?)",
                (job_id, now),
            ).rowcount
            if removed:
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ?"
                    " WHERE id = ?",
                    (now, now + ttl, job_id),
                )
            return bool(removed)

        return self.db.write(cancel)

    # --- dead letters and sizes ---------------------------------------------------

    async def dead_letters(self, channel: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``channel``."""
        rows = await self._run(functools.partial(
            self.db.read,
            "SELECT id, channel, body, reason, failed_at, job_id FROM dead_letters"
            " WHERE channel = ? ORDER BY id LIMIT ?", (channel, limit),
        ))  # fmt: skip
        letters = []
        for id_, chan, body, reason, failed_at, job_id in rows:
            try:
                message: dict[str, Any] | None = _decode(body)  # type: ignore[arg-type]
            except msgspec.DecodeError:
                message = None
            letters.append(DeadLetter(
                id=str(id_), channel=str(chan), message=message, reason=str(reason),
                failed_at=float(failed_at), job_id=job_id,  # type: ignore[arg-type]
            ))  # fmt: skip
        return letters

    async def requeue_dead(self, channel: str, ids: Sequence[str] | None = None) -> int:
        """Send dead letters back to ``channel`` from attempt 1; how many went."""

        def requeue(db: sqlite3.Connection) -> int:
            sql = "SELECT id, body, job_id FROM dead_letters WHERE channel = ?"
            params: list[Any] = [channel]
            if ids is not None:
                sql += f" AND id IN ({','.join('?' * len(ids))})"
                params.extend(int(i) for i in ids)
            rows = db.execute(sql, params).fetchall()
            now = clock.now()
            for id_, body, job_id in rows:
                db.execute(
                    "INSERT INTO messages (channel, body, ready_at, job_id) VALUES (?,?,?,?)",
                    (channel, body, now, job_id),
                )
                db.execute("DELETE FROM dead_letters WHERE id = ?", (id_,))
                if job_id is not None:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', attempt = 0, finished_at = NULL,"
                        " expires_at = NULL WHERE id = ?",
                        (job_id,),
                    )
            return len(rows)

        return await self._run(functools.partial(self.db.write, requeue))

    async def pending(self, channel: str) -> int:
        """Messages stored for ``channel``: ready, delayed and leased."""
        rows = await self._run(functools.partial(
            self.db.read, "SELECT size FROM channel_sizes WHERE channel = ?", (channel,)
        ))  # fmt: skip
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]
