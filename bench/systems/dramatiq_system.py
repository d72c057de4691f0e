"""Dramatiq: RedisBroker with the Results middleware; one worker process of 8 threads.

Bulk: ``dramatiq.group([noop.message(...), ...]).run()``, Dramatiq's documented
way to send many messages; it enqueues them one at a time. The messages come
from a twin actor on the bulk queue, since a message's queue is its actor's.
"""

from __future__ import annotations

import sys
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

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

PACKAGES = ["dramatiq", "redis", "hiredis"]
_config = Config.from_env()
broker = RedisBroker(url=_config.redis_url)
broker.add_middleware(Results(backend=RedisBackend(url=_config.redis_url)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=common.QUEUE, store_results=True)
def noop(phase: str, i: int, n: int) -> float:
    return mark(phase, i, n)


@dramatiq.actor(actor_name="noop_bulk", queue_name=common.BULK_QUEUE, store_results=True)
def noop_bulk(phase: str, i: int, n: int) -> float:
    return mark(phase, i, n)  # never runs: no worker listens on the bulk queue


def enqueue(config: Config) -> dict[str, Any]:
    return {
        "sync_send": timed(
            lambda i: noop.send(**payload(DRAIN, i, config.jobs)), range(config.jobs)
        )
    }


def enqueue_bulk(config: Config) -> dict[str, Any]:
    def send_many(indices: range) -> None:
        dramatiq.group([noop_bulk.message(**payload(BULK, i, config.jobs)) for i in indices]).run()

    return bulk_timed(send_many, config)


def worker(config: Config) -> None:
    from dramatiq.cli import main, make_argument_parser

    args = make_argument_parser().parse_args(
        [__name__,
         "--processes", "1", "--threads", "8", "--queues", common.QUEUE]
    )  # fmt: skip
    sys.exit(main(args))


def latency(config: Config) -> list[list[float]]:
    def round_trip(index: int) -> None:
        message = noop.send(**payload(LATENCY, index, config.latency_jobs))
        message.get_result(block=True, timeout=int(RESULT_TIMEOUT * 1000))

    return sequential(config, round_trip)
