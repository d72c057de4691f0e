"""The running job, visible to its handler and to every log line it writes."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from collections.abc import Awaitable, Callable

Reporter = Callable[["JobContext", float, "str | None"], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class JobContext:
    """What a handler may know about the job it runs."""

    id: str | None  #: None only for a message without a layerq envelope (basic mode)
    type: str
    channel: str
    attempt: int
    max_attempts: int
    notify: list[str]
    loop: asyncio.AbstractEventLoop
    reporter: Reporter

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Record and announce progress (0.0 .. 1.0)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("progress fraction must be between 0.0 and 1.0")
        await self.reporter(self, fraction, message)

    def progress_sync(self, fraction: float, message: str | None = None) -> None:
        """:meth:`progress` from a handler thread: runs on the worker's loop and waits."""
        future = asyncio.run_coroutine_threadsafe(self.progress(fraction, message), self.loop)
        future.result()


current_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "layerq_current_job", default=None
)
