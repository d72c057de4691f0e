"""Huey: RedisHuey (blocking dequeue) with notify_result, one worker thread (the default)."""

from __future__ import annotations

from typing import Any

from huey import RedisHuey

from bench.recorder import mark
from bench.systems import common
from bench.systems.common import DRAIN, LATENCY, RESULT_TIMEOUT, Config, payload, sequential, timed

PACKAGES = ["huey", "redis", "hiredis"]
_config = Config.from_env()
# notify_result: result waits BLPOP instead of polling from 50 ms (Huey's documented option).
huey = RedisHuey(common.QUEUE, url=_config.redis_url, notify_result=True)


@huey.task()
def noop(phase: str, i: int, n: int) -> float:
    return mark(phase, i, n)


def enqueue(config: Config) -> dict[str, Any]:
    return {
        "sync_send": timed(lambda i: noop(**payload(DRAIN, i, config.jobs)), range(config.jobs))
    }


def worker(config: Config) -> None:
    import logging

    logging.basicConfig(level=logging.INFO)  # what huey_consumer does by default
    huey.create_consumer(workers=1, worker_type="thread").run()


def latency(config: Config) -> list[list[float]]:
    def round_trip(index: int) -> None:
        noop(**payload(LATENCY, index, config.latency_jobs)).get(
            blocking=True, timeout=RESULT_TIMEOUT
        )

    return sequential(config, round_trip)
