"""``python -m bench.stages``: where layerq's Redis latency goes, stage by stage.

The bench tables give one number per system; this splits layerq's into the
stages of one job (``send().result()`` from a sync producer, ``runworker``
with the defaults, a private Redis), as medians over ``--jobs`` sequential
jobs, with the CPU time the worker and the producer spend a job (means, from
``time.process_time()``), and adds what Redis spent per job by command
(``INFO commandstats``; script calls include the commands they make) and per
script call (SLOWLOG medians; logging every command costs Redis a little, the
same for both sides of a comparison). For comparing two commits::

    python -m bench.stages --pin                     # this checkout
    python -m bench.stages --pin --tree /tmp/old     # a git worktree of another

It stamps times by wrapping a few private functions of the layer and the
worker (named below), so it follows the code it measures; the wrappers cost
a few microseconds, the same for both sides of a comparison. Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 50


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="sequential jobs (default 2000)")
    parser.add_argument("--pin", action="store_true", help="Redis and producer on CPU 0, worker 1")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the layerq checkout to measure")
    parser.add_argument("--role", choices=("worker", "producer"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is not None:
        _worker() if args.role == "worker" else _producer()
        return 0
    return _measure(args.jobs, args.pin, args.tree.resolve())


def _measure(jobs: int, pin: bool, tree: Path) -> int:
    import redis

    from bench.harness import on_cpu, pin_server
    from layerq.testing import RedisServer

    with RedisServer() as server, tempfile.TemporaryDirectory() as directory:
        client = redis.Redis.from_url(server.url)
        config = {
            "variant": "redis", "redis_url": server.url, "directory": directory,
            "jobs": jobs + WARMUP, "latency_jobs": jobs + WARMUP,
        }  # fmt: skip
        env = dict(
            os.environ,
            BENCH_CONFIG=json.dumps(config),
            DJANGO_SETTINGS_MODULE="bench.systems.layerq_project",
            PYTHONPATH=os.pathsep.join([str(tree), str(ROOT)]),
        )
        if pin:
            pin_server(client, 0)
        # Every command's own time, scripts apart (INFO lumps all EVALSHAs together).
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 64 * (jobs + WARMUP))
        with (Path(directory) / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, __file__, "--role", "worker"], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=on_cpu(1 if pin else None),
            )  # fmt: skip
        try:
            producer = subprocess.run(
                [sys.executable, __file__, "--role", "producer"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120 + jobs / 50,
                preexec_fn=on_cpu(0 if pin else None),
            )  # fmt: skip
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        if producer.returncode != 0:
            print(producer.stderr[-3000:], file=sys.stderr)
            return 1
        print(f"layerq from {tree}, {jobs} jobs{' (pinned)' if pin else ''}; medians in us")
        print(producer.stdout, end="")
        stats = client.info("commandstats")
        total = jobs + WARMUP
        print("Redis per job, us (calls per job):")
        for name, row in sorted(stats.items(), key=lambda item: -item[1]["usec"]):
            if row["calls"] >= total // 2:
                print(f"  {name[8:]:12} {row['usec'] / total:7.1f}  ({row['calls'] / total:.1f})")
        print("Redis per script call, us (median; commands they make included):")
        for name, median in _script_medians(client, tree, total):
            print(f"  {name:12} {median:7.1f}")
        client.close()
    return 0


def _script_medians(client: Any, tree: Path, total: int) -> list[tuple[str, float]]:
    """Each layerq script's median run time from SLOWLOG, slowest first."""
    names = {
        hashlib.sha1(path.read_bytes()).hexdigest(): path.stem.removeprefix("redis_")
        for path in (tree / "layerq" / "layers").glob("redis_*.lua")
    }
    times: dict[str, list[int]] = {}
    for entry in client.slowlog_get(64 * total):
        command = entry["command"].split()
        if command[0].upper() == b"EVALSHA" and len(command) > 1:
            name = names.get(command[1].decode(), "other")
            times.setdefault(name, []).append(entry["duration"])
    rows = [(name, statistics.median(t)) for name, t in times.items() if len(t) >= total // 2]
    return sorted(rows, key=lambda row: -row[1])


def _producer() -> None:
    """Send jobs one by one and wait for each result, stamping each stage."""
    import django

    django.setup()
    from bench.systems import layerq_app
    from layerq.layers import redis_conn

    writes: list[float] = []
    reads: list[float] = []
    write, read = redis_conn._SyncConnection.write, redis_conn._SyncConnection.read

    def stamped_write(self: Any, data: bytes) -> None:
        writes.append(time.time())
        write(self, data)

    def stamped_read(self: Any, count: int) -> list[Any]:
        replies = read(self, count)
        reads.append(time.time())
        return replies

    redis_conn._SyncConnection.write = stamped_write  # type: ignore[method-assign]
    redis_conn._SyncConnection.read = stamped_read  # type: ignore[method-assign]
    total = int(json.loads(os.environ["BENCH_CONFIG"])["jobs"])
    rows: list[dict[str, float]] = []
    # (worker, producer) CPU time, user and system, at the first and the last
    # measured job: the worker's as its handler ran, the producer's as the result came.
    first = last = (0.0, 0.0)
    for index in range(total):
        writes.clear()
        reads.clear()
        began = time.time()
        job = layerq_app.Noop(phase="stages", i=index, n=total).send()
        sent = time.time()
        arrived, handling, started, cpu = job.result(timeout=10)
        done = time.time()
        if index >= WARMUP:
            last = (cpu, time.process_time())
            if index == WARMUP:
                first = last
            rows.append({
                "producer, before the send's write": writes[0] - began,
                "send's round trip": reads[0] - writes[0],
                "write -> worker reads the job": arrived - writes[0],
                "worker: read -> _handle": handling - arrived,
                "worker: _handle -> handler": started - handling,
                "START (enqueue -> handler)": started - began,
                "send's reply -> send() returned": sent - reads[0],
                "handler -> result read": reads[-1] - started,
                "result read -> result() returned": done - reads[-1],
                "RESULT (enqueue -> result)": done - began,
            })  # fmt: skip
    for stage in rows[0]:
        print(f"  {stage:36} {statistics.median(r[stage] for r in rows) * 1e6:7.1f}")
    # Means over the jobs between the first and the last measured one.
    cycles = len(rows) - 1
    for name, began_cpu, ended_cpu in zip(("worker", "producer"), first, last, strict=True):
        mean = (ended_cpu - began_cpu) / cycles
        print(f"  {'CPU a job: ' + name + ' (mean)':36} {mean * 1e6:7.1f}")


def _worker() -> None:
    """runworker as the bench runs it, its handler returning the worker's stamps."""
    import django

    django.setup()
    from django.core.management import call_command

    from bench.systems import layerq_app
    from layerq import runtime
    from layerq.management.commands.runworker import Command

    try:
        from layerq.layers.redis_pipe import _Protocol
    except ImportError:  # a --tree from before redis_conn was split
        from layerq.layers.redis_conn import _Protocol  # type: ignore[attr-defined,no-redef]

    stamps = {"read": 0.0, "handle": 0.0}
    received = _Protocol.data_received
    handle = runtime.Worker._handle

    def stamped_received(self: Any, data: bytes) -> None:
        stamps["read"] = time.time()
        received(self, data)

    async def stamped_handle(self: Any, delivery: Any) -> None:
        stamps["handle"] = time.time()
        await handle(self, delivery)

    def mark(phase: str, index: int, total: int) -> list[float]:
        # The worker's CPU time so far (user and system): the producer takes
        # the difference between the first and the last measured job.
        return [stamps["read"], stamps["handle"], time.time(), time.process_time()]

    _Protocol.data_received = stamped_received  # type: ignore[method-assign]
    runtime.Worker._handle = stamped_handle  # type: ignore[method-assign]
    layerq_app.mark = mark  # type: ignore[assignment]
    call_command(Command(), "bench", log_format="json")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
