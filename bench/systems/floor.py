"""The floor: a bare redis-py LPUSH / BRPOP loop, JSON bodies, a reply list per job.

No acknowledgement, retries or records: what a queue costs before it does
anything a queue is for. Its enqueue is measured on both of redis-py's
clients, as layerq's is on both of its calls: the sync path (``sync_send``)
with ``redis.Redis``, what a Django view would call, the main path
(``enqueue``) with ``redis.asyncio.Redis``, what an async producer would
await. Its bulk figure is the pipelined floor: LPUSHes in a non-transactional
pipeline executed every ``PIPELINE_CHUNK`` jobs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio

from bench import recorder
from bench.systems.common import (
    BULK,
    BULK_QUEUE,
    DRAIN,
    LATENCY,
    QUEUE,
    RESULT_TIMEOUT,
    Config,
    aconcurrent,
    atimed,
    bulk_timed,
    payload,
    sequential,
    split,
    stop_requested,
    timed,
)

PACKAGES = ["redis", "hiredis"]
#: BRPOP timeout: how often an idle worker looks at its stop flag
POP_TIMEOUT = 1
#: LPUSHes per pipeline execution in ``enqueue_bulk``
PIPELINE_CHUNK = 1000
T = TypeVar("T")


def _client(config: Config) -> redis.Redis:
    return redis.Redis.from_url(config.redis_url, socket_timeout=POP_TIMEOUT + 5)


def enqueue(config: Config) -> dict[str, Any]:
    client = _client(config)
    sync, main_path = split(config)

    def send(index: int) -> None:
        client.lpush(QUEUE, json.dumps(payload(DRAIN, index, config.jobs)))

    sync_rate = timed(send, sync)
    return {"enqueue": async_enqueue(config, _asend, main_path), "sync_send": sync_rate}


def enqueue_concurrent(config: Config) -> dict[str, Any]:
    return concurrent_enqueue(config, _asend)


#: (async client, phase, queue, total) -> the send of job ``index`` of ``phase``
MakeSend = Callable[[redis.asyncio.Redis, str, str, int], Callable[[int], Awaitable[object]]]


def async_enqueue(config: Config, make_send: MakeSend, indices: Sequence[int]) -> float | None:
    """The rate of sending drain jobs ``indices`` one after another on an async client."""
    return _on_async_client(
        config, lambda aclient: atimed(make_send(aclient, DRAIN, QUEUE, config.jobs), indices)
    )


def concurrent_enqueue(config: Config, make_send: MakeSend) -> dict[str, Any]:
    """The concurrent phase: ``config.jobs`` sends from many coroutines on one
    async client (its connection pool growing to a connection per coroutine)."""
    return _on_async_client(
        config,
        lambda aclient: aconcurrent(
            make_send(aclient, BULK, BULK_QUEUE, config.jobs), range(config.jobs)
        ),
    )


def _on_async_client(config: Config, run: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
    """``run(client)`` on a new ``redis.asyncio`` client, in an event loop of its own."""

    async def go() -> T:
        client = redis.asyncio.Redis.from_url(config.redis_url, socket_timeout=RESULT_TIMEOUT + 5)
        try:
            return await run(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def _asend(
    client: redis.asyncio.Redis, phase: str, queue: str, total: int
) -> Callable[[int], Awaitable[object]]:
    """Send job ``index`` of ``phase`` to ``queue`` on the async ``client``."""

    def send(index: int) -> Awaitable[object]:
        return client.lpush(queue, json.dumps(payload(phase, index, total)))

    return send


def enqueue_bulk(config: Config) -> dict[str, Any]:
    client = _client(config)

    def send_many(indices: range) -> None:
        pipe = client.pipeline(transaction=False)
        for count, index in enumerate(indices, 1):
            pipe.lpush(BULK_QUEUE, json.dumps(payload(BULK, index, config.jobs)))
            if count % PIPELINE_CHUNK == 0:
                pipe.execute()
        pipe.execute()  # the last partial chunk (a no-op when there is none)

    return bulk_timed(send_many, config)


def worker(config: Config) -> None:
    client = _client(config)
    stopping = stop_requested()
    while not stopping():
        popped = client.brpop([QUEUE], timeout=POP_TIMEOUT)
        if popped is None:
            continue
        job = json.loads(popped[1])
        started = recorder.mark(job["phase"], job["i"], job["n"])
        if job["phase"] == LATENCY:
            client.lpush(f"{QUEUE}:reply:{job['i']}", json.dumps({"started": started}))


def latency(config: Config) -> list[list[float]]:
    client = _client(config)

    def round_trip(index: int) -> None:
        client.lpush(QUEUE, json.dumps(payload(LATENCY, index, config.latency_jobs)))
        if client.brpop([f"{QUEUE}:reply:{index}"], timeout=RESULT_TIMEOUT) is None:
            raise TimeoutError(f"no reply for job {index}")

    return sequential(config, round_trip)
