"""What every system adapter shares: its configuration, timing loops, and entry point.

An adapter module runs inside its system's virtualenv as
``python -m bench.systems NAME COMMAND``, with the run's settings as JSON in
``$BENCH_CONFIG``. Commands:

``enqueue_bulk``
    send ``jobs`` no-op jobs of phase ``bulk`` to ``BULK_QUEUE`` through the
    library's many-at-once call (no worker runs, none ever listens there);
    report ``{"bulk_enqueue": rate}``. Only systems that have such a call.
``enqueue_concurrent``
    send ``jobs`` no-op jobs of phase ``bulk`` to ``BULK_QUEUE`` from
    ``CONCURRENCY`` coroutines at once, each awaiting its sends one after the
    other; report ``{"concurrent_enqueue": rate}``. Only systems with an async
    client.
``enqueue``
    send ``jobs`` no-op jobs of phase ``drain`` (no worker runs yet); report rates.
``worker``
    run one worker process until SIGTERM/SIGINT.
``latency``
    send ``latency_jobs`` jobs one at a time, each after the previous result.
``inproc``
    all of the above in one process, for layers that cannot cross processes.

Each command writes ``$BENCH_DIR/COMMAND.json``. Stdlib only: the module is
imported by every venv.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.metadata
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

#: the queue / channel / list name every system uses
QUEUE = "bench"
#: where ``enqueue_bulk`` sends: no worker listens on it, and the harness flushes it
BULK_QUEUE = "bench-bulk"
BULK = "bulk"
DRAIN = "drain"
LATENCY = "latency"
#: how long the latency producer waits for one result before giving up
RESULT_TIMEOUT = 30.0
#: coroutines sending at once in ``enqueue_concurrent``: the requests an ASGI
#: server has in flight, each enqueueing a job
CONCURRENCY = 50


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """One run's settings, as the harness passed them."""

    redis_url: str
    directory: str
    jobs: int
    sync_jobs: int  #: of ``jobs``, how many go through the sync path (where there is one)
    latency_jobs: int
    variant: str = ""

    @classmethod
    def from_env(cls) -> Config:
        return cls(**json.loads(os.environ["BENCH_CONFIG"]))

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @property
    def path(self) -> Path:
        return Path(self.directory)


def payload(phase: str, index: int, total: int) -> dict[str, Any]:
    """The arguments of one no-op job: enough for the handler to stamp it."""
    return {"phase": phase, "i": index, "n": total}


def rate(count: int, seconds: float) -> float | None:
    """Operations per second, None when nothing was timed."""
    return count / seconds if count and seconds > 0 else None


def timed(send: Callable[[int], object], indices: Sequence[int]) -> float | None:
    """Call ``send(i)`` for each index; the calls per second after the first.

    The first call is made but not timed: it opens connections and imports
    what the library loads lazily, once per process, which over a short run
    would count as a slower rate (for layerq's first sync send, its channel
    layer is built then).
    """
    if not indices:
        return None
    send(indices[0])
    began = time.perf_counter()
    for index in indices[1:]:
        send(index)
    return rate(len(indices) - 1, time.perf_counter() - began)


async def atimed(send: Callable[[int], Awaitable[object]], indices: Sequence[int]) -> float | None:
    """:func:`timed` for coroutines, awaited one after the other."""
    if not indices:
        return None
    await send(indices[0])
    began = time.perf_counter()
    for index in indices[1:]:
        await send(index)
    return rate(len(indices) - 1, time.perf_counter() - began)


async def aconcurrent(
    send: Callable[[int], Awaitable[object]], indices: Sequence[int]
) -> dict[str, float | None]:
    """Send ``indices`` from ``CONCURRENCY`` coroutines, each taking the next index
    when its last send returned; ``{"concurrent_enqueue": rate}``. As in
    :func:`timed`, the first send is made alone and not timed."""
    if len(indices) < 2:
        return {"concurrent_enqueue": None}
    await send(indices[0])
    left = iter(indices[1:])

    async def lane() -> None:
        for index in left:  # one iterator shared by every lane: each index is sent once
            await send(index)

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    return {"concurrent_enqueue": rate(len(indices) - 1, time.perf_counter() - began)}


def bulk_timed(send_many: Callable[[range], object], config: Config) -> dict[str, float | None]:
    """``send_many(indices)`` sends those jobs in one many-at-once call; ``{"bulk_enqueue": rate}``.

    As in :func:`timed`, the first call is made but not timed: job 0 goes
    alone (connections, lazy imports). Jobs 1 to ``jobs`` - 1 then go in one
    call, timed with the building of their messages, as the single-job rates
    include building each job.
    """
    if config.jobs < 2:
        return {"bulk_enqueue": None}
    send_many(range(1))
    began = time.perf_counter()
    send_many(range(1, config.jobs))
    return {"bulk_enqueue": rate(config.jobs - 1, time.perf_counter() - began)}


def split(config: Config) -> tuple[range, range]:
    """The drain jobs sent through the sync path, and those sent through the main path."""
    sync = min(config.sync_jobs, config.jobs)
    return range(sync), range(sync, config.jobs)


def sequential(config: Config, round_trip: Callable[[int], object]) -> list[list[float]]:
    """Run ``round_trip(i)`` (send job i, wait for its result) for every latency job.

    Returns ``[enqueued, result_seen]`` epoch seconds per job; the handler's
    own stamp (the start) is written by the worker.
    """
    times = []
    for index in range(config.latency_jobs):
        sent = time.time()
        round_trip(index)
        times.append([sent, time.time()])
    return times


async def asequential(
    config: Config, round_trip: Callable[[int], Awaitable[object]]
) -> list[list[float]]:
    """:func:`sequential` for coroutines."""
    times = []
    for index in range(config.latency_jobs):
        sent = time.time()
        await round_trip(index)
        times.append([sent, time.time()])
    return times


def stop_requested() -> Callable[[], bool]:
    """Catch SIGTERM and SIGINT (how the harness stops a worker); the returned
    function says whether one came, for a worker's own loop to end on."""
    caught: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _: caught.append(number))
    signal.signal(signal.SIGINT, lambda number, _: caught.append(number))
    return lambda: bool(caught)


def rss_mb() -> float:
    """This process's resident set size in MB (for in-process systems)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``packages`` in this interpreter, plus Python's."""
    found = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            # Run from a checkout without being installed (layerq itself, often).
            try:
                found[name] = str(importlib.import_module(name).__version__)
            except (ImportError, AttributeError):
                found[name] = "?"
    return found


class Adapter(Protocol):
    """What a system module offers (module-level functions; unused ones may be absent)."""

    PACKAGES: Sequence[str]

    def enqueue(self, config: Config) -> dict[str, Any]: ...
    def enqueue_concurrent(self, config: Config) -> dict[str, Any]: ...
    def enqueue_bulk(self, config: Config) -> dict[str, Any]: ...
    def worker(self, config: Config) -> None: ...
    def latency(self, config: Config) -> list[list[float]]: ...


def main(argv: Sequence[str]) -> None:
    """``MODULE COMMAND``: run COMMAND of adapter bench/systems/MODULE.py, write its report.

    The adapter is imported by its package name, never run as ``__main__``, so
    libraries that import it again by name (RQ's function paths, Channels'
    ASGI_APPLICATION, Dramatiq's CLI) find the same module.
    """
    if len(argv) != 2:
        sys.exit(
            "usage: python -m bench.systems MODULE"
            " enqueue|enqueue_bulk|enqueue_concurrent|worker|latency|inproc"
        )
    name, command = argv
    module = importlib.import_module(f"bench.systems.{name}")
    if not hasattr(module, command):
        sys.exit(f"bench.systems.{name} has no {command!r} command")
    config = Config.from_env()
    report: Any = getattr(module, command)(config)
    if command == "worker":
        return
    if command == "latency":
        report = {"times": report}
    report["versions"] = versions(module.PACKAGES)
    out = config.path / f"{command}.json"
    out.write_text(json.dumps(report))
