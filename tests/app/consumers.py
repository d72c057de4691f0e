"""Worker consumers the test suite routes."""

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import layerq

from .events import Add, Again, Fail, Flaky, Multiply, Sleep, Steps, SyncAdd, SyncSleep


def _mark(marker: str) -> None:
    """Append a line to the file named by LAYERQ_TEST_RUNS, counting handler runs."""
    path = os.environ.get("LAYERQ_TEST_RUNS")
    if path and marker:
        with Path(path).open("a") as runs:
            runs.write(marker + "\n")


class MathWorker(layerq.AsyncWorkerConsumer):
    async def math_add(self, event: Add) -> int:
        return event.a + event.b

    async def math_multiply(self, event: Multiply) -> dict[str, int]:
        return {"product": event.a * event.b}

    async def math_fail(self, event: Fail) -> None:
        raise ValueError(event.message)

    async def math_flaky(self, event: Flaky) -> int:
        if self.job.attempt < event.succeed_on:
            raise RuntimeError(f"attempt {self.job.attempt} fails")
        return self.job.attempt

    async def math_again(self, event: Again) -> int:
        if self.job.attempt == 1:
            raise layerq.Retry(delay=0.05, reason="not yet")
        return self.job.attempt

    async def math_raw(self, message: dict[str, Any]) -> str:
        return str(message["value"])


class SlowWorker(layerq.AsyncWorkerConsumer):
    async def slow_steps(self, event: Steps) -> str:
        for step in range(1, event.steps + 1):
            await asyncio.sleep(event.pause)
            await self.progress(step / event.steps, f"step {step}")
        return "done"

    async def slow_sleep(self, event: Sleep) -> str:
        _mark(event.marker)
        await asyncio.sleep(event.seconds)
        return event.marker


class SyncWorker(layerq.WorkerConsumer):
    def sync_add(self, event: SyncAdd) -> int:
        self.progress(0.5, "halfway")
        return event.a + event.b

    def sync_sleep(self, event: SyncSleep) -> float:
        time.sleep(event.seconds)
        return event.seconds
