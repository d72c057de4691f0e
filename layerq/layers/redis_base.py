"""The plumbing under RedisChannelLayer: configuration, connections per loop, calls.

What every operation of :mod:`layerq.layers.redis` builds on: which host a
name lives on, the hash-tagged base of a channel's keys, the script calls
that store and settle messages, and where a job's record is (its locator).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from .. import clock
from ..errors import ConfigurationError
from . import redis_codec as codec
from . import redis_keys as keys
from . import redis_wait as waits
from .base import EXTENSION, Delivery, Queued, QueueLayer
from .redis_conn import Call, SyncPipe, Target
from .redis_pipe import AsyncPipe

#: job id -> channel, for jobs this process sent or claimed; cleared when full
_CHANNEL_CACHE_SIZE = 10_000


class RedisBase(QueueLayer):
    """Configuration and plumbing of :class:`~layerq.layers.RedisChannelLayer`."""

    extensions = ["groups", "flush", EXTENSION]
    #: settles and claims share one pipelined connection per host, in order
    settles_precede_claims = True

    def __init__(
        self,
        hosts: Sequence[Any] | None = None,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: int = 86400,
        capacity: int = 100_000,
        channel_capacity: dict[Any, int] | None = None,
        connection_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ConfigurationError(
                f"RedisChannelLayer does not take {sorted(kwargs)}; see layerq.layers.redis"
            )
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.hosts = keys.parse_hosts(hosts)
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.client_prefix = secrets.token_hex(6)
        self._scripts = keys.load_scripts()
        self._targets = [
            Target(host, dict(connection_kwargs or {}), list(self._scripts.values()))
            for host in self.hosts
        ]
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, waits.LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._last_state: tuple[weakref.ref[asyncio.AbstractEventLoop], waits.LoopState] | None
        self._last_state = None
        self._sync_pipes: list[SyncPipe] | None = None
        self._sync_lock = threading.Lock()
        self._job_channels: dict[str, str] = {}

    # --- calls ----------------------------------------------------------------

    def _state(self) -> waits.LoopState:
        loop = asyncio.get_running_loop()
        last = self._last_state
        if last is not None and last[0]() is loop:
            return last[1]  # the common case, without a weak-dictionary lookup
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = waits.LoopState(self._targets)
            waits.close_with_loop(loop, self._loops)
        self._last_state = (weakref.ref(loop), state)
        return state

    def _pipe(self, index: int) -> AsyncPipe:
        return self._state().pipes[index]

    def _sync(self, index: int) -> SyncPipe:
        if self._sync_pipes is None:
            with self._sync_lock:
                if self._sync_pipes is None:
                    self._sync_pipes = [SyncPipe(target) for target in self._targets]
        return self._sync_pipes[index]

    def _host(self, name: str) -> int:
        return keys.pick_host(name, self.hosts)

    def _base(self, channel: str) -> tuple[int, str]:
        key = self.non_local_name(channel)
        return self._host(key), keys.channel_base(self.prefix, key)

    def _remember(self, job_id: str, channel: str) -> None:
        if len(self._job_channels) >= _CHANNEL_CACHE_SIZE:
            self._job_channels.clear()
        self._job_channels[job_id] = self.non_local_name(channel)

    def _store_call(self, channel: str, message: dict[str, Any], now: float) -> Call:
        """The enqueue script for one plain message; its reply is ``[flag]``."""
        job_id = codec.job_id_of(message)
        suffix = ""
        if "!" in channel and job_id is None:
            # Every '!' channel of a process shares one list; the suffix in the
            # id lets the scripts hold each one to its own capacity.
            suffix = channel[channel.index("!") + 1 :]
        args = self._store_head(channel, now, 0.0, job_id is not None, suffix)
        args += self._store_args(channel, message, job_id, suffix)
        return ("EVALSHA", self._scripts["enqueue"], [self._base(channel)[1]], args)

    def _store_head(
        self, channel: str, now: float, delay: float, durable: bool, suffix: str = ""
    ) -> list[Any]:
        """The enqueue script's first five arguments, shared by its messages
        (redis_enqueue.lua)."""
        return [
            codec.number(now),
            codec.number(now + delay) if delay > 0 else "0",
            "0" if durable else codec.number(now + self.expiry),
            self.get_capacity(channel),
            suffix,
        ]

    def _store_args(
        self,
        channel: str,
        message: dict[str, Any],
        job_id: str | None,
        suffix: str = "",
        checked: bool = False,
    ) -> list[Any]:
        """One message's two arguments of the enqueue script: its id and payload."""
        message_id = job_id or codec.new_message_id()
        if "!" in channel:
            message = {**message, codec.LOCAL_CHANNEL_KEY: channel}
            if suffix:
                message_id = f"{message_id}!{suffix}"
        # ``checked``: a job's fields were checked by the producer that built its record.
        return [message_id, codec.encode_message(message, checked=checked)]

    def _enqueue_calls(self, channel: str, batch: Sequence[Queued], delay: float) -> list[Call]:
        """A locator SET for each job of ``batch``, then one enqueue script for them all.

        The locator lives in its own slot, so it cannot be written by the
        script (Redis Cluster refuses cross-slot scripts); written first, a
        crash between the two leaves at worst a locator without a record.
        """
        name, now, delay = self.non_local_name(channel), clock.now(), max(0.0, delay)
        calls: list[Call] = []
        args = self._store_head(channel, now, delay, durable=True)
        for message, record in batch:
            calls.append(("SET", keys.locator_key(self.prefix, record.id), name))
            args += self._store_args(channel, message, record.id, checked=True)
        calls.append(("EVALSHA", self._scripts["enqueue"], [self._base(channel)[1]], args))
        return calls

    def _settle_group(self, delivery: Delivery, op: str, *extra: Any) -> list[Any]:
        """One argument group of the settle script (see redis_settle.lua)."""
        return [op, delivery.id, delivery.token, codec.number(clock.now()), *extra]

    def _final(
        self, delivery: Delivery, op: str, ttl: float, *extra: Any
    ) -> tuple[list[Any], list[Call]]:
        """The settle group that ends a job, and its tail: the locator expires with the record.

        (Pipelined, not in the script: the locator is in another slot. After a
        stale settle the PEXPIRE is harmless: the settle that ends the job
        sets it again.)
        """
        ttl_ms = codec.milliseconds(ttl)
        group = self._settle_group(delivery, op, ttl_ms, *extra)
        if delivery.job_id is None:
            return group, []
        group.append(delivery.record)
        return group, [("PEXPIRE", keys.locator_key(self.prefix, delivery.job_id), ttl_ms)]

    # --- connections ------------------------------------------------------------

    async def close(self) -> None:
        """Stop local readers and close this loop's connections (and the sync ones)."""
        loop = asyncio.get_running_loop()
        state = self._loops.pop(loop, None)
        self._last_state = None
        if state is not None:
            await waits.close_state(state)
        with self._sync_lock:
            pipes, self._sync_pipes = self._sync_pipes, None
        for pipe in pipes or ():
            pipe.close()

    close_pools = close  # the channels_redis name
