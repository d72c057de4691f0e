"""The reliable floor: the least a Redis queue does to lose no job and keep a record.

A bare redis-py loop like the floor, plus what at-least-once delivery with
job records cannot do without, each multi-key change one Lua call:

- send: the job's record (``queued``) and the job itself, in one script;
- take: BLMOVE from the queue onto the worker's processing list (a worker
  that dies leaves its job there, for a sweeper to put back);
- ack: the job leaves the processing list, the record becomes ``succeeded``
  with the result and a TTL, and a token wakes the producer, in one script;
- result: BLPOP of that token, then the record's result, in one round trip.

No leases, attempts, retries, dead letters, delays, capacity, running state
or signatures: it is not a queue anyone should run, only the measure of what
its two guarantees cost on this Redis, against which layerq's extra work can
be read. Every job is acked (a record per job), as layerq settles every job.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from bench import recorder
from bench.systems import floor
from bench.systems.common import (
    BULK,
    BULK_QUEUE,
    DRAIN,
    LATENCY,
    QUEUE,
    RESULT_TIMEOUT,
    Config,
    bulk_timed,
    payload,
    sequential,
    split,
    stop_requested,
    timed,
)

# The floor's packages, idle wait and bulk pipeline chunk: the two rows differ only by
# what this one adds.
PACKAGES = floor.PACKAGES
POP_TIMEOUT = floor.POP_TIMEOUT
PIPELINE_CHUNK = floor.PIPELINE_CHUNK
#: how long a finished job's record is kept
RECORD_TTL = 3600

# KEYS: queue, record; ARGV: job
SEND = """
redis.call('HSET', KEYS[2], 'status', 'queued')
return redis.call('LPUSH', KEYS[1], ARGV[1])
"""
# KEYS: processing list, record, done list; ARGV: job, result, record ttl
ACK = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'succeeded', 'result', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('LPUSH', KEYS[3], '1')
redis.call('EXPIRE', KEYS[3], 60)
"""


def _client(config: Config) -> redis.Redis:
    return redis.Redis.from_url(config.redis_url, socket_timeout=RESULT_TIMEOUT + 5)


def _record(job_id: str) -> str:
    return f"{QUEUE}:job:{job_id}"


def _done(job_id: str) -> str:
    return f"{QUEUE}:done:{job_id}"


def _job(phase: str, index: int, total: int) -> tuple[str, str]:
    """A job's id and its body."""
    job_id = f"{phase}-{index}"
    return job_id, json.dumps({"id": job_id, **payload(phase, index, total)})


def enqueue(config: Config) -> dict[str, Any]:
    """As the floor's: the sync path on ``redis.Redis``, the main one on ``redis.asyncio``."""
    client = _client(config)
    send = client.register_script(SEND)
    sync, main_path = split(config)

    def send_one(index: int) -> None:
        job_id, body = _job(DRAIN, index, config.jobs)
        send(keys=[QUEUE, _record(job_id)], args=[body])

    sync_rate = timed(send_one, sync)
    return {"enqueue": floor.async_enqueue(config, _asend, main_path), "sync_send": sync_rate}


def enqueue_concurrent(config: Config) -> dict[str, Any]:
    return floor.concurrent_enqueue(config, _asend)


def _asend(
    client: redis.asyncio.Redis, phase: str, queue: str, total: int
) -> Callable[[int], Awaitable[object]]:
    """Send job ``index`` of ``phase`` to ``queue`` on the async ``client``: its
    record and the job, in one script call."""
    script = client.register_script(SEND)

    def send(index: int) -> Awaitable[object]:
        job_id, body = _job(phase, index, total)
        return script(keys=[queue, _record(job_id)], args=[body])

    return send


def enqueue_bulk(config: Config) -> dict[str, Any]:
    client = _client(config)
    send = client.register_script(SEND)

    def send_many(indices: range) -> None:
        pipe = client.pipeline(transaction=False)
        for count, index in enumerate(indices, 1):
            job_id, body = _job(BULK, index, config.jobs)
            send(keys=[BULK_QUEUE, _record(job_id)], args=[body], client=pipe)
            if count % PIPELINE_CHUNK == 0:
                pipe.execute()
        pipe.execute()

    return bulk_timed(send_many, config)


def worker(config: Config) -> None:
    client = _client(config)
    ack = client.register_script(ACK)
    processing = f"{QUEUE}:processing:1"
    stopping = stop_requested()
    while not stopping():
        body = client.blmove(QUEUE, processing, POP_TIMEOUT, "RIGHT", "LEFT")
        if body is None:
            continue
        job = json.loads(body)
        started = recorder.mark(job["phase"], job["i"], job["n"])
        result = json.dumps({"started": started})
        ack(
            keys=[processing, _record(job["id"]), _done(job["id"])], args=[body, result, RECORD_TTL]
        )


def latency(config: Config) -> list[list[float]]:
    client = _client(config)
    send = client.register_script(SEND)

    def round_trip(index: int) -> None:
        job_id, body = _job(LATENCY, index, config.latency_jobs)
        send(keys=[QUEUE, _record(job_id)], args=[body])
        pipe = client.pipeline(transaction=False)
        pipe.blpop([_done(job_id)], timeout=RESULT_TIMEOUT)
        pipe.hget(_record(job_id), "result")
        woken, result = pipe.execute()
        if woken is None or result is None:
            raise TimeoutError(f"no result for job {index}")

    return sequential(config, round_trip)
