"""Raw Channels: ``runworker`` with an AsyncConsumer on channels_redis.

No results exist: the consumer sends a reply message to the producer's own
channel. The sync path is ``async_to_sync(channel_layer.send)`` per message,
as a sync Django view would call it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import django
from django.conf import settings

from bench.systems import common
from bench.systems.common import (
    BULK,
    DRAIN,
    LATENCY,
    RESULT_TIMEOUT,
    Config,
    aconcurrent,
    asequential,
    atimed,
    payload,
    split,
    timed,
)

PACKAGES = ["channels", "channels_redis", "Django", "redis", "hiredis"]
_config = Config.from_env()
settings.configure(
    INSTALLED_APPS=["channels"],
    ASGI_APPLICATION=f"{__name__}.application",
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # The defaults (capacity 100, expiry 60 s) would refuse or expire the backlog.
            # redis-py 8's 5 s socket timeout equals channels_redis's 5 s blocking pop, so
            # an idle runworker dies (channels_redis#422) unless the timeout is raised.
            "CONFIG": {
                "hosts": [{"address": _config.redis_url, "socket_timeout": 30}],
                "capacity": 100_000,
                "expiry": 600,
            },
        }
    },
)
django.setup()

from asgiref.sync import async_to_sync  # noqa: E402
from channels.consumer import AsyncConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from bench.recorder import mark  # noqa: E402


class NoopConsumer(AsyncConsumer):  # type: ignore[misc]
    async def bench_noop(self, message: dict[str, Any]) -> None:
        started = mark(message["phase"], message["i"], message["n"])
        if "reply" in message:
            await self.channel_layer.send(
                message["reply"], {"type": "bench.done", "started": started}
            )


application = ProtocolTypeRouter(
    {"channel": ChannelNameRouter({common.QUEUE: NoopConsumer.as_asgi()})}
)


def _message(phase: str, index: int, total: int) -> dict[str, Any]:
    return {"type": "bench.noop", **payload(phase, index, total)}


def enqueue(config: Config) -> dict[str, Any]:
    layer = get_channel_layer()
    sync, main_path = split(config)
    sync_rate = timed(
        lambda i: async_to_sync(layer.send)(common.QUEUE, _message(DRAIN, i, config.jobs)), sync
    )

    async def send_rest() -> float | None:
        return await atimed(
            lambda i: layer.send(common.QUEUE, _message(DRAIN, i, config.jobs)), main_path
        )

    return {"enqueue": asyncio.run(send_rest()), "sync_send": sync_rate}


def enqueue_concurrent(config: Config) -> dict[str, Any]:
    layer = get_channel_layer()

    def send(index: int) -> Awaitable[None]:
        return layer.send(common.BULK_QUEUE, _message(BULK, index, config.jobs))

    return asyncio.run(aconcurrent(send, range(config.jobs)))


def worker(config: Config) -> None:
    from django.core.management import call_command

    call_command("runworker", common.QUEUE)


def latency(config: Config) -> list[list[float]]:
    async def go() -> list[list[float]]:
        layer = get_channel_layer()
        reply = await layer.new_channel()

        async def round_trip(index: int) -> None:
            await layer.send(
                common.QUEUE, {**_message(LATENCY, index, config.latency_jobs), "reply": reply}
            )
            async with asyncio.timeout(RESULT_TIMEOUT):
                await layer.receive(reply)

        return await asequential(config, round_trip)

    return asyncio.run(go())
