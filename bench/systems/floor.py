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
from typing import Any

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


def _client(config: Config) -> redis.Redis:
    return redis.Redis.from_url(config.redis_url, socket_timeout=POP_TIMEOUT + 5)


def enqueue(config: Config) -> dict[str, Any]:
    client = _client(config)
    sync, main_path = split(config)

    def send(index: int) -> None:
        client.lpush(QUEUE, json.dumps(payload(DRAIN, index, config.jobs)))

    sync_rate = timed(send, sync)

    async def send_rest() -> float | None:
        aclient = redis.asyncio.Redis.from_url(config.redis_url, socket_timeout=POP_TIMEOUT + 5)

        async def asend(index: int) -> None:
            await aclient.lpush(QUEUE, json.dumps(payload(DRAIN, index, config.jobs)))

        try:
            return await atimed(asend, main_path)
        finally:
            await aclient.aclose()

    return {"enqueue": asyncio.run(send_rest()), "sync_send": sync_rate}


def enqueue_concurrent(config: Config) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        # One client, its connection pool growing to a connection per coroutine.
        aclient = redis.asyncio.Redis.from_url(config.redis_url, socket_timeout=POP_TIMEOUT + 5)

        async def asend(index: int) -> None:
            await aclient.lpush(BULK_QUEUE, json.dumps(payload(BULK, index, config.jobs)))

        try:
            return await aconcurrent(asend, range(config.jobs))
        finally:
            await aclient.aclose()

    return asyncio.run(run())


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
