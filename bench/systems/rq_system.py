"""RQ: a SimpleWorker (no fork per job) on one queue; results via ``latest_result``.

Bulk: ``Queue.enqueue_many([Queue.prepare_data(...), ...])``, which saves and
queues every job in one Redis pipeline.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker

from bench.recorder import mark
from bench.systems import common
from bench.systems.common import (
    BULK,
    DRAIN,
    LATENCY,
    RESULT_TIMEOUT,
    Config,
    bulk_timed,
    payload,
    sequential,
    timed,
)

PACKAGES = ["rq", "redis", "hiredis"]


def noop(phase: str, i: int, n: int) -> float:
    return mark(phase, i, n)


def _queue(config: Config, name: str = common.QUEUE) -> Queue:
    return Queue(name, connection=Redis.from_url(config.redis_url))


def enqueue(config: Config) -> dict[str, Any]:
    queue = _queue(config)

    def send(index: int) -> None:
        queue.enqueue(noop, **payload(DRAIN, index, config.jobs))

    return {"sync_send": timed(send, range(config.jobs))}


def enqueue_bulk(config: Config) -> dict[str, Any]:
    queue = _queue(config, common.BULK_QUEUE)

    def send_many(indices: range) -> None:
        queue.enqueue_many(
            [Queue.prepare_data(noop, kwargs=payload(BULK, i, config.jobs)) for i in indices]
        )

    return bulk_timed(send_many, config)


def worker(config: Config) -> None:
    queue = _queue(config)
    SimpleWorker([queue], connection=queue.connection).work(logging_level="INFO")


def latency(config: Config) -> list[list[float]]:
    queue = _queue(config)

    def round_trip(index: int) -> None:
        job = queue.enqueue(noop, **payload(LATENCY, index, config.latency_jobs))
        if job.latest_result(timeout=int(RESULT_TIMEOUT)) is None:
            raise TimeoutError(f"no result for job {index}")

    return sequential(config, round_trip)
