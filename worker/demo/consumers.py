"""The worker consumer of the ``demo`` channel, run by ``manage.py runworker demo``."""

import asyncio
import time
from typing import Any

import layerq

from .events import Explode, Render


class RendererFire(RuntimeError):
    """The demo's deliberate failure."""


class DemoWorker(layerq.AsyncWorkerConsumer):
    async def demo_render(self, event: Render) -> dict[str, Any]:
        began = time.monotonic()
        for step in range(1, event.steps + 1):
            await asyncio.sleep(event.pause)
            await self.progress(step / event.steps, f"step {step} of {event.steps}")
        return {
            "frames": event.steps,
            "seconds": round(time.monotonic() - began, 2),
            "attempt": self.job.attempt,
        }

    async def demo_explode(self, event: Explode) -> None:
        for step in range(1, event.steps + 1):
            await asyncio.sleep(event.pause)
            if step == event.fail_at:
                raise RendererFire(f"the renderer caught fire at step {step}")
            await self.progress(step / event.steps, f"step {step} of {event.steps}")
