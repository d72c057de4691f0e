"""Where a worker's deliveries come from and where their outcomes go.

``QueueSource`` speaks the acknowledged-receive extension of layerq layers.
``BasicSource`` adapts any other Channels layer: ``receive()`` is at most
once, so there are no leases, retries or records; what can be kept (running
handlers concurrently, returning unstarted messages at shutdown, logging the
dead) is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import structlog

from .layers import Delivery, QueueLayer
from .layers.base import Started

log = structlog.get_logger("layerq")


class QueueSource:
    """Deliveries from a layerq layer, under leases."""

    reliable = True

    def __init__(self, layer: QueueLayer) -> None:
        self.layer = layer

    async def claim(
        self,
        channels: Sequence[str],
        limit: int,
        lease: float,
        wait: float,
        started: Started | None = None,
        running: int | None = None,
    ) -> list[Delivery]:
        return await self.layer.claim(channels, limit, lease, wait, started, running)

    async def start(self, delivery: Delivery) -> bool:
        return await self.layer.start(delivery)

    async def extend(self, deliveries: Sequence[Delivery], lease: float) -> None:
        await self.layer.extend(deliveries, lease)

    async def ack(self, delivery: Delivery, result: Any, ttl: float) -> bool:
        return await self.layer.ack(delivery, result, ttl)

    async def retry(self, delivery: Delivery, delay: float, error_type: str, message: str) -> bool:
        return await self.layer.retry(delivery, delay, error_type, message)

    async def dead_letter(
        self, delivery: Delivery, reason: str, error_type: str, message: str, ttl: float
    ) -> bool:
        return await self.layer.dead_letter(delivery, reason, error_type, message, ttl)

    async def set_progress(self, job_id: str, fraction: float, message: str | None) -> None:
        await self.layer.set_progress(job_id, fraction, message)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        await self.layer.release(deliveries)

    async def close(self) -> None:
        pass


class BasicSource:
    """Deliveries from any Channels layer: received once, nothing to acknowledge."""

    reliable = False

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._receives: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    async def claim(
        self,
        channels: Sequence[str],
        limit: int,
        lease: float,
        wait: float,
        started: Started | None = None,
        running: int | None = None,
    ) -> list[Delivery]:
        """Receive from ``channels``; ``started`` and ``running`` are not used (they
        come one by one, and there are no records)."""
        for channel in channels:
            if channel not in self._receives:
                self._receives[channel] = asyncio.create_task(self.layer.receive(channel))
        done, _ = await asyncio.wait(
            self._receives.values(), timeout=wait, return_when=asyncio.FIRST_COMPLETED
        )
        deliveries: list[Delivery] = []
        for channel, task in list(self._receives.items()):
            if task in done and len(deliveries) < limit:
                del self._receives[channel]
                message = task.result()
                deliveries.append(
                    Delivery(
                        id=str(next(self._ids)),
                        channel=channel,
                        message=message,
                        attempt=1,
                        token="",
                    )
                )
        return deliveries

    async def extend(self, deliveries: Sequence[Delivery], lease: float) -> None:
        pass

    async def ack(self, delivery: Delivery, result: Any, ttl: float) -> bool:
        return True

    async def retry(self, delivery: Delivery, delay: float, error_type: str, message: str) -> bool:
        return False  # never called: basic mode runs each message once

    async def dead_letter(
        self, delivery: Delivery, reason: str, error_type: str, message: str, ttl: float
    ) -> bool:
        # No store to move it to: the job.dead log line is the record.
        return True

    async def set_progress(self, job_id: str, fraction: float, message: str | None) -> None:
        pass

    async def start(self, delivery: Delivery) -> bool:
        """Nothing to mark: basic mode keeps no records (and claims none ahead)."""
        return True

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        # Unstarted messages go back on their channel instead of dying with us.
        for delivery in deliveries:
            try:
                await self.layer.send(delivery.channel, delivery.message)
            except Exception as exc:  # the log line is all that is left of it
                log.error("job.dead", channel=delivery.channel, reason=f"not returned: {exc!r}")

    async def close(self) -> None:
        for task in self._receives.values():
            task.cancel()
        unclaimed = []
        for channel, task in self._receives.items():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                # A receive that completed before the cancel holds a message
                # that left the layer: it goes back rather than with us.
                unclaimed.append(
                    Delivery(id="", channel=channel, message=await task, attempt=1, token="")
                )
        self._receives.clear()
        await self.release(unclaimed)
