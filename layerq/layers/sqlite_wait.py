"""Waking receivers when another connection commits to the SQLite file.

SQLite has no notifications, so each event loop that has waiting receivers
runs one watcher task. It reads ``PRAGMA data_version`` every few
milliseconds (a read of shared memory that changes whenever any *other*
connection commits) and, only when it changed or a slow tick passed (delays
and leases end with time, not commits), asks which of the waited-on channels
have ready messages and wakes just those waiters. Idle receivers therefore
cost one cheap pragma per tick per process, not one query each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence

import structlog

from .. import clock

log = structlog.get_logger("layerq")

#: how often the watcher looks at data_version while work flows; bounds latency
TICK = 0.001
#: ... and after IDLE_AFTER seconds without a commit, to spend less on idle polling
IDLE_TICK = 0.005
IDLE_AFTER = 1.0
#: a watcher without waiters keeps its connection this long before it stops
LINGER = 2.0
#: re-check even without commits, for delayed messages and expired leases
SLOW_TICK = 0.05


class Waiters:
    """The waiting receivers of one event loop on one SQLite file."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._events: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def subscribe(self, channels: Sequence[str]) -> AsyncIterator[asyncio.Event]:
        """An event set whenever one of ``channels`` may have a ready message."""
        event = asyncio.Event()
        for channel in channels:
            self._events.setdefault(channel, set()).add(event)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())
        try:
            yield event
        finally:
            for channel in channels:
                members = self._events.get(channel)
                if members is not None:
                    members.discard(event)
                    if not members:
                        del self._events[channel]

    def wake(self, channels: Sequence[str]) -> None:
        """Set the events of everyone waiting on ``channels``."""
        for channel in channels:
            for event in self._events.get(channel, ()):
                event.set()

    async def _watch(self) -> None:
        db = self._connect()
        try:
            loop = asyncio.get_running_loop()
            version = -1
            last_scan = last_change = unwatched_since = loop.time()
            while True:
                now = loop.time()
                if not self._events:
                    if now - unwatched_since > LINGER:
                        break
                    await asyncio.sleep(IDLE_TICK)
                    continue
                unwatched_since = now
                try:
                    # Reading data_version is a shared-memory read, cheap enough
                    # to do on the loop thread without an executor hop.
                    (current,) = db.execute("PRAGMA data_version").fetchone()
                    if current != version:
                        last_change = now
                    if current != version or now - last_scan >= SLOW_TICK:
                        version = current
                        last_scan = now
                        self.wake(_ready_channels(db, list(self._events)))
                except sqlite3.Error as exc:
                    # A busy or broken tick must not end the watching: receivers
                    # would never be woken. Wake everyone to re-check, then go on.
                    log.warning("layer.watch_failed", error=repr(exc))
                    self.wake(list(self._events))
                    await asyncio.sleep(SLOW_TICK)
                await asyncio.sleep(TICK if now - last_change < IDLE_AFTER else IDLE_TICK)
        finally:
            db.close()


def _ready_channels(db: sqlite3.Connection, channels: list[str]) -> list[str]:
    # EXISTS stops at the first ready row of each channel, where DISTINCT over
    # the index would walk a whole backlog; json_each avoids a variable limit.
    rows = db.execute(
        "SELECT c.value FROM json_each(?) AS c WHERE EXISTS (SELECT 1 FROM messages AS m"
        " WHERE m.channel = c.value AND m.ready_at <= ?)",
        (json.dumps(channels), clock.now()),
    ).fetchall()
    return [row[0] for row in rows]
