"""The systems under test: one adapter module each, and the registry the harness reads.

Nothing here imports a queue library: the harness imports this package, and
each adapter runs in its own interpreter (see bench/systems/common.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util


@dataclasses.dataclass(frozen=True, slots=True)
class System:
    """One row of the results table."""

    key: str  #: the name --systems takes
    label: str  #: the row name in the table
    #: the adapter bench/systems/MODULE.py, run as ``python -m bench.systems MODULE COMMAND``
    module: str
    variant: str = ""  #: passed to the adapter in its Config
    venv: str | None = None  #: bench/requirements/VENV.txt; None: the harness's interpreter
    in_process: bool = False  #: producer and worker share one process (``inproc`` command)
    #: the library has a many-at-once send: the adapter has ``enqueue_bulk``
    bulk: bool = False
    #: the library has an async client: the adapter has ``enqueue_concurrent``
    concurrent: bool = False
    note: str = ""  #: how it was configured, printed under the table

    def unavailable(self) -> str | None:
        """Why this system cannot run here, or None."""
        if (
            self.key.startswith("layerq-redis")
            and importlib.util.find_spec("layerq.layers.redis") is None
        ):
            return "layerq.layers.redis does not exist yet"
        return None


SYSTEMS = [
    System(
        "floor",
        "redis-py LPUSH/BRPOP (floor)",
        "floor",
        note=(
            "bare redis-py loop (hiredis parser, as layerq has), JSON bodies, a reply list"
            " per job; no ack, retries or records"
        ),
        bulk=True,
        concurrent=True,
    ),
    System(
        "floor-reliable",
        "redis-py reliable floor",
        "floor_reliable",
        note=(
            "the floor plus the least that loses no job and keeps a record: send = record +"
            " LPUSH (one script), take = BLMOVE onto a processing list, ack = LREM + record"
            " succeeded with result and TTL + wake token (one script), result = BLPOP + HGET;"
            " no leases, retries, dead letters, delays, capacity or running state"
        ),
        bulk=True,
        concurrent=True,
    ),
    System(
        "layerq-sqlite",
        "layerq SQLite",
        "layerq_system",
        "sqlite",
        note="SQLiteChannelLayer in a temp file; runworker defaults (8 slots, signed, leased);"
        " result via job.result()",
        bulk=True,
        concurrent=True,
    ),
    System(
        "layerq-inmemory",
        "layerq basic, InMemory (in-process)",
        "layerq_system",
        "inmemory",
        in_process=True,
        note="InMemoryChannelLayer, at-most-once; producer and worker share ONE process;"
        " result = the layerq.job.succeeded group notification; RSS is that shared process",
        bulk=True,
    ),
    System(
        "layerq-redis",
        "layerq Redis",
        "layerq_system",
        "redis",
        note="layerq RedisChannelLayer; runworker defaults; result via job.result()",
        bulk=True,
        concurrent=True,
    ),
    System(
        "layerq-redis-prefetch",
        "layerq Redis, prefetch 24",
        "layerq_system",
        "redis-prefetch",
        note="as layerq Redis, with runworker --prefetch 24: up to 32 jobs held (8 running),"
        " as Celery's default prefetch multiplier of 4 holds with 8 threads",
    ),
    System(
        "celery-solo",
        "Celery (solo pool)",
        "celery_system",
        "solo",
        venv="celery",
        note="redis broker and result backend, --pool solo, prefetch multiplier 4 (default);"
        " result via AsyncResult.get()",
        bulk=True,
    ),
    System(
        "celery-threads",
        "Celery (threads pool)",
        "celery_system",
        "threads",
        venv="celery",
        note="as solo but --pool threads --concurrency 8",
        bulk=True,
    ),
    System(
        "rq",
        "RQ (SimpleWorker)",
        "rq_system",
        venv="rq",
        note="SimpleWorker (no fork per job); result via Job.latest_result(timeout=)",
        bulk=True,
    ),
    System(
        "dramatiq",
        "Dramatiq",
        "dramatiq_system",
        venv="dramatiq",
        note="RedisBroker, Results middleware (RedisBackend), 1 process x 8 threads;"
        " result via message.get_result(block=True)",
        bulk=True,
    ),
    System(
        "arq",
        "arq",
        "arq_system",
        venv="arq",
        note="max_jobs 10 (default); worker poll_delay 0.5 s and job.result() poll 0.5 s"
        " (defaults)",
        concurrent=True,
    ),
    System(
        "arq-fastpoll",
        "arq (10 ms poll)",
        "arq_system",
        "fastpoll",
        venv="arq",
        note="as arq, with worker poll_delay and job.result(poll_delay=) at 10 ms",
        concurrent=True,
    ),
    System(
        "huey",
        "Huey (RedisHuey)",
        "huey_system",
        venv="huey",
        note="RedisHuey (blocking BRPOP) with notify_result=True (result.get(blocking=True)"
        " waits on BLPOP instead of polling from 50 ms), 1 worker thread (default)",
    ),
    System(
        "channels",
        "Channels runworker + channels_redis",
        "channels_system",
        venv="channels",
        note="RedisChannelLayer capacity 100k, expiry 600 s, socket_timeout 30 s (with redis-py"
        " 8's 5 s default an idle runworker dies, channels_redis#422); no results: the"
        " consumer sends a reply message to the producer's channel",
        concurrent=True,
    ),
]


def by_key(key: str) -> System:
    """The system named ``key``; KeyError listing the known ones."""
    for system in SYSTEMS:
        if system.key == key:
            return system
    raise KeyError(f"unknown system {key!r}; known: {', '.join(s.key for s in SYSTEMS)}")
