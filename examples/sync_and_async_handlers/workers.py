"""Events and the worker consumers that handle them: sync on "reports", async on "fetch"."""

import asyncio
import time
from typing import Any

from channels.routing import ChannelNameRouter, ProtocolTypeRouter

import layerq


class BuildReport(layerq.Event, type="reports.build", channel="reports"):
    sections: list[str]


class FetchPage(layerq.Event, type="fetch.page", channel="fetch"):
    url: str


class FetchBroken(layerq.Event, type="fetch.broken", channel="fetch"):
    url: str


class FetchRateLimited(layerq.Event, type="fetch.rate_limited", channel="fetch"):
    url: str


class FetchSlow(layerq.Event, type="fetch.slow", channel="fetch"):
    seconds: float


class ReportWorker(layerq.WorkerConsumer):
    """Plain `def` handlers: they run in the worker's thread pool, so blocking is fine."""

    def reports_build(self, event: BuildReport) -> dict[str, int]:
        for done, section in enumerate(event.sections, start=1):
            time.sleep(0.01)  # blocking work: a query, a PDF renderer...
            self.progress(done / len(event.sections), f"rendered {section}")
        return {"pages": len(event.sections)}

    def reports_ping(self, message: dict[str, Any]) -> str:
        # No Event annotation: the handler gets the message as a plain dict.
        return f"pong {message['n']}"


class FetchWorker(layerq.AsyncWorkerConsumer):
    """`async def` handlers: they run as tasks on the worker's event loop."""

    async def fetch_page(self, event: FetchPage) -> int:
        await asyncio.sleep(0.01)
        return len(event.url)

    async def fetch_broken(self, event: FetchBroken) -> None:
        # Any exception fails this attempt; the worker retries with backoff.
        raise ConnectionError(f"{event.url} is down (attempt {self.job.attempt})")

    async def fetch_rate_limited(self, event: FetchRateLimited) -> int:
        if self.job.attempt == 1:
            raise layerq.Retry(delay=0.2, reason="429 Too Many Requests")
        return self.job.attempt

    async def fetch_slow(self, event: FetchSlow) -> None:
        await asyncio.sleep(event.seconds)


application = ProtocolTypeRouter(
    {
        "channel": ChannelNameRouter(
            {"reports": ReportWorker.as_asgi(), "fetch": FetchWorker.as_asgi()}
        ),
    }
)
