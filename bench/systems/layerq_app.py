"""The benchmark's event, worker consumer and ASGI routing (plain Channels routers)."""

from __future__ import annotations

import django

django.setup()

from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

import layerq  # noqa: E402
from bench.recorder import mark  # noqa: E402
from bench.systems.common import QUEUE  # noqa: E402


class Noop(layerq.Event, type="bench.noop", channel=QUEUE):
    """A job that does nothing but stamp its start."""

    phase: str
    i: int
    n: int


class BenchWorker(layerq.AsyncWorkerConsumer):
    async def bench_noop(self, event: Noop) -> float:
        return mark(event.phase, event.i, event.n)


application = ProtocolTypeRouter({"channel": ChannelNameRouter({QUEUE: BenchWorker.as_asgi()})})
