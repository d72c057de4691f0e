"""RedisChannelLayer: a Channels layer on Redis that is also a durable queue.

Configured as channels_redis is::

    "BACKEND": "layerq.layers.RedisChannelLayer",
    "CONFIG": {"hosts": ["redis://localhost:6379/0"], "prefix": "asgi"},

Key layout and scripts: :mod:`layerq.layers.redis_keys` and the
``redis_*.lua`` files. Each message lives once in a per-channel hash; the ready
list, the delay and lease sets hold only ids, and every move between them is one
Lua script, so a crash between two commands cannot duplicate or lose a message.

Configuration, connections per event loop and the script calls:
:mod:`layerq.layers.redis_base`. Waiting and cancellation:
:mod:`layerq.layers.redis_wait`. Job records and dead letters:
:mod:`layerq.layers.redis_records`.

Connections and faults: :mod:`layerq.layers.redis_conn` (sync) and
:mod:`layerq.layers.redis_pipe` (asyncio). Connection errors
are retried (bounded, jittered backoff, reconnecting as needed); past the
bound an operation raises :class:`~layerq.errors.TransportError`. ``claim``
keeps retrying until its ``wait`` has passed and only then raises
TransportError.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from .. import clock
from ..errors import QueueFull, TransportError
from . import redis_codec as codec
from . import redis_keys as keys
from . import redis_wait as waits
from .base import Delivery, Queued, Started, stored_so_far
from .redis_conn import BLOCK_MAX, Call, check, transport_errors
from .redis_pipe import AsyncPipe
from .redis_records import RedisRecords


class RedisChannelLayer(RedisRecords):
    """A Channels layer on one or more Redis servers, with leases and job records."""

    # --- Channels layer spec ------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; QueueFull (a ChannelFull) at capacity."""
        self.require_valid_channel_name(channel)
        call = self._store_call(channel, message, clock.now())
        with transport_errors("send"):
            ((stored,),) = await self._pipe(self._base(channel)[0]).call([call])
        if stored == 0:
            raise QueueFull(f"channel {channel!r} is at capacity")

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of ``channel``, removed from Redis (at most once)."""
        self.require_valid_channel_name(channel)
        state = self._state()
        if "!" in channel:
            key = self.non_local_name(channel)
            box = state.local.setdefault(key, waits.LocalBox())
            return await waits.receive_local(
                box, channel, lambda: self._read_local(state, key, box)
            )
        buffer = state.buffers.setdefault(channel, deque())
        index, base = self._base(channel)
        pipe, script = state.pipes[index], self._scripts["claim"]
        orphaned = state.orphaned.setdefault(channel, set())
        while True:
            if orphaned:
                # A cancelled receive's take may be bringing a message home.
                await asyncio.wait(set(orphaned))
            if buffer:
                return buffer.popleft()
            with transport_errors("receive"):
                rows, next_due = await waits.take(
                    pipe,
                    script,
                    base,
                    1,
                    0.0,
                    lambda rows: buffer.extend(waits.messages(rows)),
                    orphaned,
                )
            if rows:
                return waits.messages(rows)[0]
            with transport_errors("receive"):
                await waits.block(
                    state.pools, [(index, base)], waits.block_for(next_due, BLOCK_MAX)
                )

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name: ``prefix.<client>!<random>``."""
        return f"{prefix}.{self.client_prefix}!{secrets.token_hex(12)}"

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        key = keys.group_key(self.prefix, group)
        calls: list[Call] = [
            ("ZADD", key, codec.number(clock.now()), channel),
            ("EXPIRE", key, int(self.group_expiry)),
        ]
        with transport_errors("group_add"):
            await self._pipe(self._host(group)).call(calls)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        call = ("ZREM", keys.group_key(self.prefix, group), channel)
        with transport_errors("group_discard"):
            await self._pipe(self._host(group)).call([call])

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send to every member of ``group``; full members miss it, nothing raises."""
        self.require_valid_group_name(group)
        codec.encode_message(message)  # refuse a bad message once, not per member
        state = self._state()
        key = keys.group_key(self.prefix, group)
        now = clock.now()
        calls: list[Call] = [
            ("ZREMRANGEBYSCORE", key, "-inf", codec.number(now - self.group_expiry)),
            ("ZRANGE", key, 0, -1),
        ]
        with transport_errors("group_send"):
            _, members = await state.pipes[self._host(group)].call(calls)
        by_host: dict[int, list[Call]] = {}
        for member in members:
            channel = member.decode()
            by_host.setdefault(self._base(channel)[0], []).append(
                self._store_call(channel, message, now)
            )
        with transport_errors("group_send"):
            # A full member returns 0 from the script: dropped, as the spec says.
            await asyncio.gather(
                *(state.pipes[index].call(batch) for index, batch in by_host.items())
            )

    async def flush(self) -> None:
        """Delete every key of this prefix (SCAN, never KEYS) and local buffers."""
        state = self._state()
        for pipe in state.pipes:
            with transport_errors("flush"):
                for pattern in keys.scan_patterns(self.prefix):
                    cursor = b"0"
                    while True:
                        scan = ("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                        ((cursor, found),) = await pipe.call([scan])
                        if found:
                            # One key a command: keys of many slots (Redis Cluster).
                            await pipe.call([("UNLINK", key) for key in found])
                        if cursor == b"0":
                            break
        state.buffers.clear()
        for box in state.local.values():
            box.queues.clear()
        self._job_channels.clear()

    async def _read_local(self, state: waits.LoopState, key: str, box: waits.LocalBox) -> None:
        """Take messages for this process's ``!`` channels and hand them out."""
        index, base = self._host(key), keys.channel_base(self.prefix, key)
        pipe, script = state.pipes[index], self._scripts["claim"]
        try:
            while box.waiters > 0:
                with transport_errors("receive"):
                    rows, next_due = await waits.take(pipe, script, base, 100, 0.0, box.dispatch)
                    box.dispatch(rows)
                    if not rows:
                        await waits.block(
                            state.pools, [(index, base)], waits.block_for(next_due, BLOCK_MAX)
                        )
        finally:
            box.signal()

    # --- producer side --------------------------------------------------------

    async def enqueue_many(
        self, channel: str, batch: Sequence[Queued], delay: float = 0.0
    ) -> list[bool]:
        """Store each job atomically, a round trip per chunk (a waiting job's record is
        read from its stored message, see redis_enqueue.lua).

        A chunk retried after a fault is not stored twice: the script knows
        the ids it holds.
        """
        self.require_valid_channel_name(channel)
        pipe = self._pipe(self._base(channel)[0])
        if len(batch) <= ENQUEUE_CHUNK:  # a send: one round trip, nothing to tally
            calls = self._enqueue_calls(channel, batch, delay)
            with transport_errors("enqueue"):
                replies = await _answer(pipe, calls, pipe.submit(calls))
            flags, refused = self._enqueued(channel, batch, calls, replies)
            if refused:
                with stored_so_far(flags), transport_errors("enqueue"):
                    await pipe.call(refused)
            return flags
        chunks = list(_chunks(batch))
        sending: list[tuple[list[Call], asyncio.Future[list[Any]] | None]] = []
        for index, chunk in enumerate(chunks):
            calls = self._enqueue_calls(channel, chunk, delay)
            sending.append((calls, pipe.submit(calls)))
            if index + 1 < len(chunks):
                await asyncio.sleep(0)  # it is written while the next chunk is built
        stored: list[bool] = []
        undo: list[Call] = []
        with stored_so_far(stored), transport_errors("enqueue"):
            for chunk, (calls, future) in zip(chunks, sending, strict=True):
                flags, undone = self._enqueued(
                    channel, chunk, calls, await _answer(pipe, calls, future)
                )
                stored += flags
                undo += undone
            if undo:
                await pipe.call(undo)
        return stored

    def enqueue_many_sync(
        self, channel: str, batch: Sequence[Queued], delay: float = 0.0
    ) -> list[bool]:
        """:meth:`enqueue_many` from sync code, on a sync client: no event loop."""
        self.require_valid_channel_name(channel)
        pipe = self._sync(self._base(channel)[0])
        if len(batch) <= ENQUEUE_CHUNK:  # a send: one plain round trip
            calls = self._enqueue_calls(channel, batch, delay)
            with transport_errors("enqueue"):
                replies = pipe.call(calls)
            flags, refused = self._enqueued(channel, batch, calls, replies)
            if refused:
                with stored_so_far(flags), transport_errors("enqueue"):
                    pipe.call(refused)
            return flags
        chunks = list(_chunks(batch))
        sent: list[list[Call]] = []

        def build() -> Iterator[list[Call]]:
            # Built as they are sent: the next chunk's calls while Redis stores the last.
            for chunk in chunks:
                sent.append(self._enqueue_calls(channel, chunk, delay))
                yield sent[-1]

        stored: list[bool] = []
        undo = []
        with stored_so_far(stored), transport_errors("enqueue"):
            for index, replies in enumerate(pipe.call_each(build())):
                flags, undone = self._enqueued(channel, chunks[index], sent[index], replies)
                stored += flags
                undo += undone
            if undo:
                pipe.call(undo)
        return stored

    def _enqueued(
        self, channel: str, chunk: Sequence[Queued], calls: list[Call], replies: list[Any]
    ) -> tuple[list[bool], list[Call]]:
        """A chunk's outcome from the replies to its ``calls``: a flag per job (stored
        or refused), and the DELs of the refused jobs' locators, which would point at
        nothing. The stored jobs' channels are remembered."""
        flags = [flag != 0 for flag in replies[-1]]  # the script's, after the locator SETs
        undo: list[Call] = []
        for index, ((_, record), stored) in enumerate(zip(chunk, flags, strict=True)):
            if stored:
                self._remember(record.id, channel)
            else:
                undo.append(("DEL", calls[index][1]))
        return flags, undo

    # --- worker side -----------------------------------------------------------

    async def claim(
        self,
        channels: Sequence[str],
        limit: int,
        lease: float,
        wait: float,
        started: Started | None = None,
        running: int | None = None,
    ) -> list[Delivery]:
        """Lease up to ``limit`` messages; wait up to ``wait`` s for the first.

        During an outage it retries until ``wait`` has passed, then raises
        TransportError. ``started``, ``running``: see QueueLayer.claim.
        """
        names = list(channels)
        for name in names:
            self.require_valid_channel_name(name)
        state = self._state()
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        failures = 0
        # One channel: the next take first blocks this long, same pipeline.
        block, room = self._first_block(state, names, limit, end)
        while True:
            try:
                blocked, block = block, 0.0
                asked = room if blocked else limit
                deliveries, next_due = await self._claim_once(
                    state, names, asked, lease, blocked, started, running
                )
                if not blocked:
                    room = limit  # that take went behind every settle on its connection
                failures = 0
                if deliveries or (loop.time() >= end and not blocked):
                    return deliveries
                if loop.time() >= end:
                    # A take after a block saw the clock of before it: one
                    # last look, with a fresh clock, at what fell due meanwhile.
                    continue
                timeout = waits.block_for(next_due, min(BLOCK_MAX, end - loop.time()))
                if len(names) == 1:
                    block = max(0.001, timeout)
                    continue
                with transport_errors("claim"):
                    await waits.block(state.pools, [self._base(n) for n in names], timeout)
            except TransportError:
                failures += 1
                if loop.time() >= end:
                    raise
                await asyncio.sleep(min(0.05 * 2**failures, 1.0, end - loop.time()))

    def _first_block(
        self, state: waits.LoopState, names: list[str], limit: int, end: float
    ) -> tuple[float, int]:
        """How long a claim's first take blocks (0: a plain take), and for how many.

        An idle worker's claim would otherwise run the take script once for
        nothing before it blocks. When the last take of its one channel left
        nothing ready, it blocks at once, on a connection of the blocking pool.
        That connection may reach Redis ahead of settles still in flight on
        the main one (see settles_precede_claims), whose leases Redis still
        counts: the take asks for that many fewer.
        """
        if len(names) != 1 or names[0] not in state.drained:
            return 0.0, limit
        room = limit - state.settling.get(self._base(names[0])[1], 0)
        left = end - asyncio.get_running_loop().time()
        if room <= 0 or left <= 0:
            return 0.0, limit
        return max(0.001, waits.block_for(state.next_due.get(names[0]), min(BLOCK_MAX, left))), room

    async def _claim_once(
        self,
        state: waits.LoopState,
        names: list[str],
        limit: int,
        lease: float,
        block: float,
        started: Started | None = None,
        running: int | None = None,
    ) -> tuple[list[Delivery], float | None]:
        # Rotating the starting channel keeps one busy channel from starving the rest.
        state.rotation += 1
        start = state.rotation % len(names)
        deliveries: list[Delivery] = []
        next_due: float | None = None
        for name in names[start:] + names[:start]:
            if len(deliveries) >= limit:
                break
            index, base = self._base(name)
            # Of this channel's jobs, how many start now (see QueueLayer.claim).
            marked = None if running is None else max(0, running - len(deliveries))

            def orphan(rows: list[waits.Row], name: str = name) -> None:
                state.spawn(self.release(self._deliveries(name, rows)))

            handed: list[Delivery] = []
            early = None
            if started is not None:

                def early(
                    rows: list[waits.Row],
                    name: str = name,
                    handed: list[Delivery] = handed,
                    marked: int | None = marked,
                ) -> None:
                    handed.extend(self._deliveries(name, rows, marked))
                    started(handed)

            with transport_errors("claim"):
                rows, due = await waits.take(
                    state.pipes[index],
                    self._scripts["claim"],
                    base,
                    limit - len(deliveries),
                    lease,
                    orphan,
                    pool=state.pools[index] if block > 0 else None,
                    block=block,
                    early=early,
                    running=marked,
                )
            if len(rows) < limit - len(deliveries):
                state.drained.add(name)  # the take emptied the ready list
            else:
                state.drained.discard(name)
            state.next_due[name] = due
            deliveries += handed or self._deliveries(name, rows, marked)
            if due is not None and (next_due is None or due < next_due):
                next_due = due
        return deliveries, next_due

    def _deliveries(
        self, channel: str, rows: list[waits.Row], marked: int | None = None
    ) -> list[Delivery]:
        """Deliveries of a take's ``rows``; past the first ``marked``, their records
        were left as they were (see QueueLayer.claim)."""
        out = [codec.delivery(channel, row) for row in rows]
        for index, item in enumerate(out):
            if item.job_id is not None:
                self._remember(item.job_id, channel)
            if marked is not None and index >= marked:
                item.marked_running = False
        return out

    async def _settle(
        self, delivery: Delivery, what: str, group: list[Any], tail: Sequence[Call] = ()
    ) -> bool:
        """Settle one delivery; False when its lease was stale.

        The settles of one loop turn on one channel share one script call
        (a worker's acks of a batch); on a fault the call is made on its own,
        with retries.
        """
        index, base = self._base(delivery.channel)
        state = self._state()
        pipe, script = state.pipes[index], self._scripts["settle"]
        state.settling[base] = state.settling.get(base, 0) + 1  # see _first_block
        try:
            future = pipe.merge(script, base, group, tail)
            if future is not None:
                try:
                    done = await future
                except RedisConnectionError:
                    done = None
                if isinstance(done, int):
                    return bool(done)
            with transport_errors(what):
                ((done,), *_) = await pipe.call(
                    [("EVALSHA", script, [base], [len(group), *group]), *tail]
                )
            return bool(done)
        finally:
            state.settling[base] -= 1

    async def extend(self, deliveries: Sequence[Delivery], lease: float) -> None:
        """Push the leases of ``deliveries`` to now + ``lease``."""
        deadline = codec.number(clock.now() + lease)
        await asyncio.gather(
            *(
                self._settle(d, "extend", self._settle_group(d, "extend", deadline))
                for d in deliveries
            )
        )

    async def start(self, delivery: Delivery) -> bool:
        """Mark a prefetched delivery's record running (see QueueLayer.start)."""
        group = self._settle_group(delivery, "start", delivery.attempt)
        return await self._settle(delivery, "start", group)

    async def ack(self, delivery: Delivery, result: Any, ttl: float) -> bool:
        """Remove the message; record succeeded with ``result`` for ``ttl`` s."""
        group, tail = self._final(delivery, "ack", ttl, codec.encode_value(result))
        return await self._settle(delivery, "ack", group, tail)

    async def retry(
        self, delivery: Delivery, delay: float, error_type: str, error_message: str
    ) -> bool:
        """Return the message, ready after ``delay``; record retrying with the error."""
        due = codec.number(clock.now() + max(0.0, delay))
        group = self._settle_group(delivery, "retry", due, error_type, error_message)
        return await self._settle(delivery, "retry", group)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Return messages unrun, first in line; the attempt is not counted."""
        await asyncio.gather(
            *(self._settle(d, "release", self._settle_group(d, "release")) for d in deliveries)
        )

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        error_type: str,
        error_message: str,
        ttl: float,
    ) -> bool:
        """Move the message to the dead letters; record failed, kept ``ttl`` s."""
        info = codec.encode_value([reason, clock.now(), delivery.job_id])
        group, tail = self._final(delivery, "dead", ttl, error_type, error_message, info)
        return await self._settle(delivery, "dead_letter", group, tail)


#: jobs stored per round trip by enqueue_many: bounds the memory of one write
#: and of its replies, and how long other callers on the connection wait
ENQUEUE_CHUNK = 500


def _chunks(batch: Sequence[Queued]) -> Iterator[Sequence[Queued]]:
    for start in range(0, len(batch), ENQUEUE_CHUNK):
        yield batch[start : start + ENQUEUE_CHUNK]


async def _answer(
    pipe: AsyncPipe, calls: list[Call], future: asyncio.Future[list[Any]] | None
) -> list[Any]:
    """The replies of ``calls`` submitted as ``future``; on a fault (or when they
    could not be submitted) they run again through :meth:`AsyncPipe.call`, with its
    retries: they must be safe to run twice."""
    if future is not None:
        try:
            return check(await future)
        except (RedisConnectionError, NoScriptError):
            pass
    return await pipe.call(calls)
