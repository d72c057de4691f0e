"""Dramatiq: RedisBroker with the Results middleware; one worker process of 8 threads."""

from __future__ import annotations

import sys
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.recorder import mark
from bench.systems import common
from bench.systems.common import DRAIN, LATENCY, RESULT_TIMEOUT, Config, payload, sequential, timed

PACKAGES = ["dramatiq", "redis", "hiredis"]
_config = Config.from_env()
broker = RedisBroker(url=_config.redis_url)
broker.add_middleware(Results(backend=RedisBackend(url=_config.redis_url)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=common.QUEUE, store_results=True)
def noop(phase: str, i: int, n: int) -> float:
    return mark(phase, i, n)


def enqueue(config: Config) -> dict[str, Any]:
    return {
        "enqueue": timed(lambda i: noop.send(**payload(DRAIN, i, config.jobs)), range(config.jobs))
    }


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
