"""layerq: ``Event.send()`` / ``asend()`` producers and ``manage.py runworker`` (8 slots).

Variants (see layerq_project): ``sqlite`` and ``redis`` are the at-least-once
layerq layers, results read with ``job.result()`` (``redis-prefetch``: the
worker prefetches, see PREFETCH); ``inmemory`` is basic mode
on InMemoryChannelLayer, where producer and worker share one process and the
outcome arrives as the ``layerq.job.succeeded`` group notification.

Bulk: ``layerq.send_many(events, channel=BULK_QUEUE)``, the sync call a
management command or view makes, with every event in one call (layerq
chunks internally). For ``inmemory`` it runs in its own process like the
others, so its jobs vanish with it and never share the drain's process.

Concurrent: ``layerq.asend(BULK_QUEUE, event)`` from ``CONCURRENCY``
coroutines of one event loop (``sqlite`` and ``redis`` only).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.systems.layerq_project")

from bench import recorder
from bench.systems import common
from bench.systems.common import (
    BULK,
    DRAIN,
    LATENCY,
    RESULT_TIMEOUT,
    Config,
    aconcurrent,
    asequential,
    atimed,
    bulk_timed,
    payload,
    sequential,
    split,
    timed,
)

PACKAGES = ["layerq", "Django", "channels", "msgspec", "structlog", "redis", "hiredis"]
#: ``runworker --prefetch`` of the ``-prefetch`` variants: with the 8 slots, up to 32
#: jobs held, as Celery holds with 8 threads and its default prefetch multiplier (4)
PREFETCH = 24
#: the group an in-process producer joins to hear outcomes in basic mode
RESULTS_GROUP = "bench.results"


def _app() -> Any:
    from bench.systems import layerq_app

    return layerq_app


def enqueue(config: Config) -> dict[str, Any]:
    noop = _app().Noop
    sync, main_path = split(config)
    sync_rate = timed(lambda i: noop(**payload(DRAIN, i, config.jobs)).send(), sync)

    async def send_rest() -> float | None:
        return await atimed(lambda i: noop(**payload(DRAIN, i, config.jobs)).asend(), main_path)

    return {"enqueue": asyncio.run(send_rest()), "sync_send": sync_rate}


def enqueue_concurrent(config: Config) -> dict[str, Any]:
    import layerq

    noop = _app().Noop

    def asend(index: int) -> Awaitable[object]:
        return layerq.asend(common.BULK_QUEUE, noop(**payload(BULK, index, config.jobs)))

    return asyncio.run(aconcurrent(asend, range(config.jobs)))


def enqueue_bulk(config: Config) -> dict[str, Any]:
    import layerq

    noop = _app().Noop

    def send_many(indices: range) -> None:
        layerq.send_many(
            [noop(**payload(BULK, i, config.jobs)) for i in indices], channel=common.BULK_QUEUE
        )

    return bulk_timed(send_many, config)


def worker(config: Config) -> None:
    from django.core.management import call_command

    from layerq.management.commands.runworker import Command

    _app()
    prefetch = PREFETCH if config.variant.endswith("-prefetch") else 0
    call_command(Command(), common.QUEUE, log_format="json", prefetch=prefetch)


def latency(config: Config) -> list[list[float]]:
    noop = _app().Noop

    def round_trip(index: int) -> None:
        noop(**payload(LATENCY, index, config.latency_jobs)).send().result(timeout=RESULT_TIMEOUT)

    return sequential(config, round_trip)


def inproc(config: Config) -> dict[str, Any]:
    """Basic mode on InMemoryChannelLayer: every phase in this one process."""
    from layerq import logs

    logs.configure("INFO", json=True)  # what runworker does; stderr goes to the log file
    report = enqueue(config)
    report.update(asyncio.run(_inproc_run(config)))
    return report


async def _inproc_run(config: Config) -> dict[str, Any]:
    from layerq.layers import get_layer
    from layerq.runtime import Worker

    app = _app()
    layer = get_layer()
    worker = Worker(app.application, [common.QUEUE])
    running = asyncio.create_task(worker.run())
    try:
        await _until(recorder.starts_path(config.path, DRAIN), running, 30 + config.jobs / 20)
        reply = await layer.new_channel()
        await layer.group_add(RESULTS_GROUP, reply)

        async def round_trip(index: int) -> None:
            job = await app.Noop(**payload(LATENCY, index, config.latency_jobs)).asend(
                notify=RESULTS_GROUP
            )
            async with asyncio.timeout(RESULT_TIMEOUT):
                while True:
                    event = await layer.receive(reply)
                    if event["type"] == "layerq.job.succeeded" and event["job"]["id"] == job.id:
                        return

        times = await asequential(config, round_trip)
        await _until(recorder.starts_path(config.path, LATENCY), running, 30)
        rss = common.rss_mb()
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, 30)
    return {"times": times, "rss_mb": rss}


async def _until(path: Any, running: asyncio.Task[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if running.done():
            raise RuntimeError(f"the worker stopped before {path.name} was written")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} not written within {timeout:.0f}s")
        await asyncio.sleep(0.05)
