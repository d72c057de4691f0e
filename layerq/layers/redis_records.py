"""Job records and dead letters on Redis: reading, waiting for, cancelling,
requeueing; the part of :class:`~layerq.layers.RedisChannelLayer` that looks
a job up by its id.

A job's channel is found from this process's memory of the jobs it sent or
claimed, else from the job's locator key (``prefix:loc:<id>``, in a slot of
its own); its record is read from its stored message while it waits and from
its record hash once a worker took it (see redis_wait.read_record_calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .. import clock
from ..conf import get_settings
from ..jobs import JobRecord
from . import redis_codec as codec
from . import redis_keys as keys
from . import redis_wait as waits
from .base import DeadLetter
from .redis_base import RedisBase
from .redis_conn import Call, transport_errors


class RedisRecords(RedisBase):
    """Records and dead letters of :class:`~layerq.layers.RedisChannelLayer`."""

    # --- records ------------------------------------------------------------------

    async def set_progress(self, job_id: str, progress: float, message: str | None) -> None:
        """Store a running job's progress (ignored when it has no record)."""
        channel = await self._locate(job_id)
        if channel is None:
            return
        key = keys.record_key(self.prefix, channel, job_id)
        args = [codec.number(progress), "0" if message is None else "1", message or ""]
        with transport_errors("set_progress"):
            await self._pipe(self._host(channel)).call(
                [("EVALSHA", self._scripts["progress"], [key], args)]
            )

    async def get_record(self, job_id: str) -> JobRecord | None:
        """The job's record, or None."""
        channel = await self._locate(job_id)
        if channel is None:
            return None
        where = self._record_keys(channel, job_id)
        with transport_errors("get_record"):
            replies = await self._pipe(self._host(channel)).call(waits.read_record_calls(where))
        return waits.decode_read(where, *replies)

    def get_record_sync(self, job_id: str) -> JobRecord | None:
        """:meth:`get_record` from sync code."""
        channel = self._locate_sync(job_id)
        if channel is None:
            return None
        where = self._record_keys(channel, job_id)
        with transport_errors("get_record"):
            replies = self._sync(self._host(channel)).call(waits.read_record_calls(where))
        return waits.decode_read(where, *replies)

    async def get_message(self, job_id: str) -> dict[str, Any] | None:
        """The job's message while it waits, runs or is dead-lettered, or None."""
        channel = await self._locate(job_id)
        if channel is None:
            return None
        with transport_errors("get_message"):
            stored = await self._pipe(self._host(channel)).call(
                self._message_calls(channel, job_id)
            )
        return _first_message(stored)

    def get_message_sync(self, job_id: str) -> dict[str, Any] | None:
        """:meth:`get_message` from sync code."""
        channel = self._locate_sync(job_id)
        if channel is None:
            return None
        with transport_errors("get_message"):
            stored = self._sync(self._host(channel)).call(self._message_calls(channel, job_id))
        return _first_message(stored)

    async def wait_record(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """The record once the job ended (woken by its end, no polling), or at ``timeout``."""
        channel = await self._locate(job_id)
        if channel is None:
            return None
        pool = self._state().pools[self._host(channel)]
        where = self._record_keys(channel, job_id)
        with transport_errors("wait_record"):
            return await waits.wait_record(pool, self._scripts["watch"], where, timeout)

    def wait_record_sync(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """:meth:`wait_record` from sync code."""
        channel = self._locate_sync(job_id)
        if channel is None:
            return None
        pipe = self._sync(self._host(channel))
        where = self._record_keys(channel, job_id)
        with transport_errors("wait_record"):
            return waits.wait_record_sync(pipe, self._scripts["watch"], where, timeout)

    async def cancel(self, job_id: str) -> bool:
        """Remove a job still waiting (not leased); record cancelled."""
        channel = await self._locate(job_id)
        if channel is None:
            return False
        pipe = self._pipe(self._host(channel))
        with transport_errors("cancel"):
            (payload,) = await pipe.call([self._payload_call(channel, job_id)])
            if payload is None:
                return False  # not stored: ended, or never sent
            script, expire = self._cancel_calls(channel, job_id, payload)
            (cancelled,) = await pipe.call([script])
            if cancelled:
                await pipe.call([expire])
        return bool(cancelled)

    def cancel_sync(self, job_id: str) -> bool:
        """:meth:`cancel` from sync code."""
        channel = self._locate_sync(job_id)
        if channel is None:
            return False
        pipe = self._sync(self._host(channel))
        with transport_errors("cancel"):
            (payload,) = pipe.call([self._payload_call(channel, job_id)])
            if payload is None:
                return False
            script, expire = self._cancel_calls(channel, job_id, payload)
            (cancelled,) = pipe.call([script])
            if cancelled:
                pipe.call([expire])
        return bool(cancelled)

    # --- dead letters ---------------------------------------------------------------

    async def dead_letters(self, channel: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``channel``."""
        self.require_valid_channel_name(channel)
        index, base = self._base(channel)
        pipe = self._pipe(index)
        with transport_errors("dead_letters"):
            (ids,) = await pipe.call([("ZRANGE", f"{base}:deadq", 0, max(0, limit - 1))])
            if not ids:
                return []
            payloads, infos = await pipe.call(
                [("HMGET", f"{base}:dead", *ids), ("HMGET", f"{base}:deadinfo", *ids)]
            )
        return [
            codec.dead_letter(channel, raw_id, payload, info)
            for raw_id, payload, info in zip(ids, payloads, infos, strict=True)
        ]

    async def requeue_dead(self, channel: str, ids: Sequence[str] | None = None) -> int:
        """Send dead letters (all, or ``ids``) back to ``channel`` from attempt 1."""
        self.require_valid_channel_name(channel)
        index, base = self._base(channel)
        pipe = self._pipe(index)
        script = self._scripts["requeue"]
        todo = None if ids is None else list(ids)
        count = 0
        with transport_errors("requeue_dead"):
            # The script requeues up to 1000 at a time: the named ids, or the oldest.
            while todo is None or todo:
                chosen, todo = ([], None) if todo is None else (todo[:1000], todo[1000:])
                args = [codec.number(clock.now()), *chosen]
                (done,) = await pipe.call([("EVALSHA", script, [base], args)])
                jobs = [codec.text(raw) for raw in done if not raw.startswith(b".")]
                if jobs:
                    await pipe.call([("PERSIST", keys.locator_key(self.prefix, j)) for j in jobs])
                count += len(done)
                if ids is None and len(done) < 1000:
                    break
        return count

    async def pending(self, channel: str) -> int:
        """Messages stored for ``channel``: ready, delayed and leased."""
        self.require_valid_channel_name(channel)
        index, base = self._base(channel)
        with transport_errors("pending"):
            (count,) = await self._pipe(index).call([("HLEN", f"{base}:msg")])
        return int(count)

    # --- finding a job ---------------------------------------------------------------

    async def _locate(self, job_id: str) -> str | None:
        """The (non-local) channel of ``job_id``, from memory or the locator keys."""
        cached = self._job_channels.get(job_id)
        if cached is not None:
            return cached
        state = self._state()
        key = keys.locator_key(self.prefix, job_id)
        with transport_errors("get_record"):
            found = await asyncio.gather(*(pipe.call([("GET", key)]) for pipe in state.pipes))
        for (channel,) in found:
            if channel is not None:
                return codec.text(channel)
        return None

    def _locate_sync(self, job_id: str) -> str | None:
        cached = self._job_channels.get(job_id)
        if cached is not None:
            return cached
        key = keys.locator_key(self.prefix, job_id)
        with transport_errors("get_record"):
            for index in range(len(self.hosts)):
                (channel,) = self._sync(index).call([("GET", key)])
                if channel is not None:
                    return codec.text(channel)
        return None

    def _record_keys(self, channel: str, job_id: str) -> waits.RecordKeys:
        return waits.RecordKeys(
            job_id,
            channel,
            keys.record_key(self.prefix, channel, job_id),
            keys.done_key(self.prefix, channel, job_id),
            keys.messages_key(self.prefix, channel),
        )

    def _payload_call(self, channel: str, job_id: str) -> Call:
        """Read the stored message of ``job_id`` (a cancel reads its record's fixed fields
        there)."""
        return ("HGET", keys.messages_key(self.prefix, channel), job_id)

    def _message_calls(self, channel: str, job_id: str) -> list[Call]:
        """Read the stored message of ``job_id``, and its dead letter's."""
        dead = f"{keys.channel_base(self.prefix, channel)}:dead"
        return [self._payload_call(channel, job_id), ("HGET", dead, job_id)]

    def _cancel_calls(self, channel: str, job_id: str, payload: bytes) -> tuple[Call, Call]:
        """The cancel script for the job stored as ``payload``, and the locator's
        expiry to run once it cancelled."""
        ttl = codec.milliseconds(get_settings().result_ttl)
        fixed = codec.packed_record_pairs(payload, channel)
        args = [job_id, codec.number(clock.now()), ttl, fixed]
        base = keys.channel_base(self.prefix, channel)
        return (
            ("EVALSHA", self._scripts["cancel"], [base], args),
            ("PEXPIRE", keys.locator_key(self.prefix, job_id), ttl),
        )


def _first_message(payloads: list[bytes | None]) -> dict[str, Any] | None:
    for payload in payloads:
        if payload is not None:
            return codec.decode_message(payload)
    return None
