"""One event and its worker, routed for `runworker squares`."""

import os
import time

from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.conf import settings

import layerq


class Square(layerq.Event, type="squares.compute", channel="squares"):
    n: int


class SquareWorker(layerq.WorkerConsumer):
    def squares_compute(self, event: Square) -> int:
        time.sleep(0.02)  # some real work
        with open(settings.EXAMPLE_RUNS_FILE, "a") as runs:
            runs.write(f"{self.job.id} {os.getpid()}\n")
        return event.n * event.n


application = ProtocolTypeRouter(
    {"channel": ChannelNameRouter({"squares": SquareWorker.as_asgi()})},
)
