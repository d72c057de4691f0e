"""SQLiteChannelLayer: the embedded, zero-setup layerq layer.

A complete Channels layer (websockets can use it too) and a durable queue,
shared by every process on one machine through one SQLite file. Sync callers
(Django views) use the connection of their own thread directly; async callers
go through a small thread pool so the event loop never waits on the disk. The
SQL lives in ``sqlite_ops``, the file and its transactions in ``sqlite_db``,
the waking of receivers in ``sqlite_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import secrets
import sqlite3
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .. import clock
from ..conf import get_settings
from ..errors import ConfigurationError, QueueFull
from ..events import check_plain
from ..jobs import JobRecord
from . import sqlite_ops as ops
from .base import DeadLetter, Delivery, Queued, QueueLayer, Started, stored_so_far
from .sqlite_db import Database
from .sqlite_wait import Waiters

T = TypeVar("T")

#: how often expired messages, groups and records are swept, at most
SWEEP_EVERY = 5.0
#: jobs stored per transaction by enqueue_many: how long one holds the write lock
ENQUEUE_CHUNK = 500


@dataclasses.dataclass(slots=True)
class _Outcome:
    fn: Callable[..., bool]
    args: tuple[Any, ...]
    future: asyncio.Future[bool]


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
        # Outcomes (ack, retry, dead letter) settled in the same moments share
        # one transaction: a group commit per event loop, one in flight at a time.
        self._outcomes: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        self._committers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<SQLiteChannelLayer {self.db.path}>"

    # --- plumbing ------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(db, *args)`` in a write transaction on the pool."""
        return await self._run(functools.partial(self._write_sync, fn, *args))

    def _write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self.db.write(lambda db: fn(db, *args))

    async def _settle(self, fn: Callable[..., bool], *args: Any) -> bool:
        """Run ``fn(db, *args)`` in the next group commit of this loop."""
        loop = asyncio.get_running_loop()
        outcome = _Outcome(fn, args, loop.create_future())
        queued = self._outcomes.get(loop)
        if queued is None:
            self._outcomes[loop] = [outcome]
            # Held so the task is not garbage-collected while it commits.
            committer = loop.create_task(self._commit_outcomes(loop))
            self._committers.add(committer)
            committer.add_done_callback(self._committers.discard)
        else:
            queued.append(outcome)
        return await outcome.future

    async def _commit_outcomes(self, loop: asyncio.AbstractEventLoop) -> None:
        while batch := self._outcomes.get(loop):
            self._outcomes[loop] = []

            def settle(db: sqlite3.Connection, batch: list[_Outcome] = batch) -> list[bool]:
                return [outcome.fn(db, *outcome.args) for outcome in batch]

            try:
                results = await self._run(functools.partial(self.db.write, settle))
            except Exception as exc:
                for outcome in batch:
                    if not outcome.future.done():
                        outcome.future.set_exception(exc)
            else:
                for outcome, result in zip(batch, results, strict=True):
                    if not outcome.future.done():
                        outcome.future.set_result(result)
        self._outcomes.pop(loop, None)

    def _waiting(self) -> Waiters:
        loop = asyncio.get_running_loop()
        waiters = self._waiters.get(loop)
        if waiters is None:
            waiters = self._waiters[loop] = Waiters(self.db.connect_ready)
        return waiters

    def _insert(
        self, db: sqlite3.Connection, channel: str, message: dict[str, Any], delay: float = 0.0
    ) -> bool:
        return ops.insert(db, channel, message, self.get_capacity(channel), self.expiry, delay)

    def _maybe_sweep(self, db: sqlite3.Connection) -> None:
        now = clock.now()
        if now - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now
            ops.sweep(db)

    # --- the Channels layer spec --------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; QueueFull (a ChannelFull) at capacity."""
        self.require_valid_channel_name(channel)
        if not isinstance(message, dict) or "__asgi_channel__" in message:
            raise TypeError("message must be a dict without __asgi_channel__")
        check_plain(message, "$")
        if not await self._write(self._insert, channel, message):
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

    def _pop(self, channel: str) -> dict[str, Any] | None:
        def pop(db: sqlite3.Connection) -> bytes | None:
            self._maybe_sweep(db)
            return ops.pop(db, channel)

        body = self.db.write(pop)
        return None if body is None else ops.decode(body)

    def _keep(self, channel: str, future: asyncio.Future[dict[str, Any] | None]) -> None:
        """Buffer what a cancelled receive() popped, and wake the next receiver."""
        if not future.cancelled() and future.exception() is None:
            message = future.result()
            if message is not None:
                self._buffers.setdefault(channel, deque()).append(message)
                self._waiting().wake([channel])

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel name."""
        return f"{prefix}.{self.client_prefix}!{secrets.token_hex(8)}"

    async def flush(self) -> None:
        """Delete every message, group, job record and dead letter in the file."""
        self._buffers.clear()
        await self._write(ops.flush)

    async def close(self) -> None:
        """Nothing to release that the process exit would not; for API parity."""

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._write(ops.group_add, group, channel, self.group_expiry)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._write(ops.group_discard, group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send to every member of ``group``; full members miss it (never raises for that)."""
        self.require_valid_group_name(group)
        check_plain(message, "$")
        await self._run(functools.partial(self.group_send_sync, group, message))

    def group_send_sync(self, group: str, message: dict[str, Any]) -> None:
        """:meth:`group_send` for sync code."""

        def send(db: sqlite3.Connection) -> None:
            for channel in ops.group_members(db, group):
                self._insert(db, channel, message)

        self.db.write(send)

    # --- producer side of the queue -----------------------------------------

    async def enqueue_many(
        self, channel: str, batch: Sequence[Queued], delay: float = 0.0
    ) -> list[bool]:
        """Store job messages and their queued records, a transaction per chunk."""
        return await self._run(functools.partial(self.enqueue_many_sync, channel, batch, delay))

    def enqueue_many_sync(
        self, channel: str, batch: Sequence[Queued], delay: float = 0.0
    ) -> list[bool]:
        """:meth:`enqueue_many` without an event loop, for sync views."""
        self.require_valid_channel_name(channel)

        def enqueue(db: sqlite3.Connection, chunk: Sequence[Queued]) -> list[bool]:
            return [
                self._store_job(db, channel, message, record, delay) for message, record in chunk
            ]

        stored: list[bool] = []
        with stored_so_far(stored):
            for start in range(0, len(batch), ENQUEUE_CHUNK):
                stored += self._write_sync(enqueue, batch[start : start + ENQUEUE_CHUNK])
        return stored

    def _store_job(
        self,
        db: sqlite3.Connection,
        channel: str,
        message: dict[str, Any],
        record: JobRecord,
        delay: float,
    ) -> bool:
        """Store a job's message and queued record; False when the channel is full.

        As on Redis: a job sent again while its message is stored (a send
        retried) is not stored twice, and one sent again after it ended starts
        afresh, its new record replacing the old.
        """
        if ops.add_record(db, record):
            if self._insert(db, channel, message, delay):
                return True
            ops.drop_record(db, record.id)
            return False
        if ops.job_stored(db, record.id):
            return True
        if not self._insert(db, channel, message, delay):
            return False
        ops.add_record(db, record, replace=True)
        return True

    # --- worker side -------------------------------------------------------------

    async def claim(
        self,
        channels: Sequence[str],
        limit: int,
        lease: float,
        wait: float,
        started: Started | None = None,
        running: int | None = None,
    ) -> list[Delivery]:
        """Lease up to ``limit`` ready messages, waiting up to ``wait`` for the first
        (``running``: see QueueLayer.claim).

        ``started`` is not used: a claim's deliveries come back from a thread,
        with nothing to gain by handing them over sooner.
        """
        for channel in channels:
            self.require_valid_channel_name(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait

        def claim(db: sqlite3.Connection) -> list[Delivery]:
            self._maybe_sweep(db)
            return ops.claim(db, channels, limit, lease, running)

        async with self._waiting().subscribe(channels) as ready:
            while True:
                ready.clear()
                # A lease taken after the caller gave up is harmless: it expires
                # and the message is delivered again, so no shield is needed.
                deliveries = await self._run(functools.partial(self.db.write, claim))
                remaining = deadline - loop.time()
                if deliveries or remaining <= 0:
                    return deliveries
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), remaining)

    async def extend(self, deliveries: Sequence[Delivery], lease: float) -> None:
        """Heartbeat: leases of ``deliveries`` end ``lease`` seconds from now."""
        await self._write(ops.extend, list(deliveries), lease)

    async def start(self, delivery: Delivery) -> bool:
        """Mark a prefetched delivery's record running (see QueueLayer.start)."""
        return await self._settle(ops.start, delivery)

    async def ack(self, delivery: Delivery, result: Any, ttl: float) -> bool:
        """Done: remove the message, record succeeded with ``result``."""
        return await self._settle(ops.ack, delivery, result, ttl)

    async def retry(
        self, delivery: Delivery, delay: float, error_type: str, error_message: str
    ) -> bool:
        """Return the message, ready after ``delay``; record retrying."""
        return await self._settle(ops.retry, delivery, delay, error_type, error_message)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Return unrun messages now; the attempt they took is given back."""

        def release(db: sqlite3.Connection) -> None:
            for delivery in deliveries:
                ops.release(db, delivery)

        await self._run(functools.partial(self.db.write, release))

    async def dead_letter(
        self, delivery: Delivery, reason: str, error_type: str, error_message: str, ttl: float
    ) -> bool:
        """Move the message to the dead letters; record failed."""
        return await self._settle(ops.dead_letter, delivery, reason, error_type, error_message, ttl)

    # --- records ---------------------------------------------------------------

    async def set_progress(self, job_id: str, progress: float, message: str | None) -> None:
        """Store a running job's progress."""
        await self._write(ops.set_progress, job_id, progress, message)

    async def get_record(self, job_id: str) -> JobRecord | None:
        """The job's record, or None."""
        return await self._run(functools.partial(self.get_record_sync, job_id))

    def get_record_sync(self, job_id: str) -> JobRecord | None:
        """:meth:`get_record` for sync code."""
        return self.db.read(ops.get_record, job_id)

    async def get_message(self, job_id: str) -> dict[str, Any] | None:
        """The job's message while it waits, runs or is dead-lettered, or None."""
        return await self._run(functools.partial(self.get_message_sync, job_id))

    def get_message_sync(self, job_id: str) -> dict[str, Any] | None:
        """:meth:`get_message` for sync code."""
        return self.db.read(ops.get_message, job_id)

    async def cancel(self, job_id: str) -> bool:
        """Remove a job no worker holds; record cancelled."""
        return await self._run(functools.partial(self.cancel_sync, job_id))

    def cancel_sync(self, job_id: str) -> bool:
        """:meth:`cancel` for sync code."""
        return self._write_sync(ops.cancel, job_id, get_settings().result_ttl)

    # --- dead letters and sizes ---------------------------------------------------

    async def dead_letters(self, channel: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``channel``."""
        return await self._run(functools.partial(self.db.read, ops.dead_letters, channel, limit))

    async def requeue_dead(self, channel: str, ids: Sequence[str] | None = None) -> int:
        """Send dead letters back to ``channel`` from attempt 1; how many went."""
        return await self._write(ops.requeue_dead, channel, ids)

    async def pending(self, channel: str) -> int:
        """Messages stored for ``channel``: ready, delayed and leased."""
        return await self._run(functools.partial(self.db.read, ops.pending, channel))
