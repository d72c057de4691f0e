"""arq: asyncio worker (max_jobs 10); variant ``fastpoll`` polls every 10 ms, not 0.5 s."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import run_worker

from bench.recorder import mark
from bench.systems.common import (
    BULK,
    BULK_QUEUE,
    DRAIN,
    LATENCY,
    RESULT_TIMEOUT,
    Config,
    aconcurrent,
    asequential,
    atimed,
    payload,
)

PACKAGES = ["arq", "redis", "hiredis"]
_config = Config.from_env()
#: arq's default poll is 0.5 s for both the worker and job.result()
POLL = 0.01 if _config.variant == "fastpoll" else 0.5


async def noop(ctx: dict[str, Any], phase: str, i: int, n: int) -> float:
    return mark(phase, i, n)


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(_config.redis_url)
    poll_delay = POLL


def enqueue(config: Config) -> dict[str, Any]:
    async def go() -> float | None:
        pool = await create_pool(WorkerSettings.redis_settings)
        rate = await atimed(
            lambda i: pool.enqueue_job("noop", **payload(DRAIN, i, config.jobs)), range(config.jobs)
        )
        await pool.aclose()
        return rate

    return {"enqueue": asyncio.run(go())}


def enqueue_concurrent(config: Config) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        pool = await create_pool(WorkerSettings.redis_settings)

        def send(index: int) -> Awaitable[object]:
            return pool.enqueue_job(
                "noop", **payload(BULK, index, config.jobs), _queue_name=BULK_QUEUE
            )

        try:
            return await aconcurrent(send, range(config.jobs))
        finally:
            await pool.aclose()

    return asyncio.run(go())


def worker(config: Config) -> None:
    run_worker(WorkerSettings)  # type: ignore[arg-type]


def latency(config: Config) -> list[list[float]]:
    async def go() -> list[list[float]]:
        pool = await create_pool(WorkerSettings.redis_settings)

        async def round_trip(index: int) -> None:
            job = await pool.enqueue_job("noop", **payload(LATENCY, index, config.latency_jobs))
            assert job is not None
            await job.result(timeout=RESULT_TIMEOUT, poll_delay=POLL)

        times = await asequential(config, round_trip)
        await pool.aclose()
        return times

    return asyncio.run(go())
