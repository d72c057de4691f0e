"""Celery: Redis broker and result backend; variant ``solo`` or ``threads`` (8 threads).

Bulk: ``group(noop.s(...) for ...).apply_async()``, Celery's documented way to
send many tasks; it publishes one message per task over one producer.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, group

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

PACKAGES = ["celery", "kombu", "redis", "hiredis"]
_config = Config.from_env()
app = Celery("bench", broker=_config.redis_url, backend=_config.redis_url)
app.conf.task_default_queue = common.QUEUE
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.noop")
def noop(phase: str, i: int, n: int) -> float:
    return mark(phase, i, n)


def enqueue(config: Config) -> dict[str, Any]:
    return {
        "sync_send": timed(
            lambda i: noop.delay(**payload(DRAIN, i, config.jobs)), range(config.jobs)
        )
    }


def enqueue_bulk(config: Config) -> dict[str, Any]:
    def send_many(indices: range) -> None:
        group(noop.s(**payload(BULK, i, config.jobs)) for i in indices).apply_async(
            queue=common.BULK_QUEUE
        )

    return bulk_timed(send_many, config)


def worker(config: Config) -> None:
    argv = ["worker", "--pool", config.variant, "--loglevel", "INFO", "-Q", common.QUEUE]
    if config.variant == "threads":
        argv += ["--concurrency", "8"]
    app.worker_main(argv)


def latency(config: Config) -> list[list[float]]:
    def round_trip(index: int) -> None:
        noop.delay(**payload(LATENCY, index, config.latency_jobs)).get(timeout=RESULT_TIMEOUT)

    return sequential(config, round_trip)
