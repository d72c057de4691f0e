"""Running one system through the workloads, generically, in subprocesses.

For a system with a many-at-once send, first ``enqueue_bulk`` (no worker
runs) to the bulk queue, in its own subdirectory ``bulk/`` (so a file layer
such as layerq's SQLite keeps those jobs in a file of their own), then Redis
is flushed; likewise ``enqueue_concurrent`` in ``concurrent/`` for a system
with an async client. For a system with a separate worker: ``enqueue`` (no worker
yet); start the worker; wait for the drain stamps its handlers write; run
``latency``; wait for its stamps; read the worker's RSS; stop the worker
(SIGTERM, then SIGKILL of its whole process group). In-process systems run
``inproc`` instead. Every wait is bounded, every process is ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import recorder
from bench.systems import System
from bench.systems.common import DRAIN, LATENCY, Config

ROOT = Path(__file__).resolve().parent.parent
#: seconds a worker gets to exit after SIGTERM before its process group is killed
STOP_GRACE = 10.0
#: how often the harness looks for a stamps file (it measures nothing: stamps carry the times)
POLL = 0.1


class BenchError(Exception):
    """A system could not complete a workload; the row shows this message."""


@dataclasses.dataclass(frozen=True, slots=True)
class Percentiles:
    """p50 / p95 / p99 in milliseconds."""

    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles:
        cuts = statistics.quantiles([s * 1000 for s in seconds], n=100, method="inclusive")
        return cls(cuts[49], cuts[94], cuts[98])


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one system measured (None: not measured or not applicable)."""

    system: System
    enqueue: float | None = None  #: jobs/s through the async path (asend(), redis.asyncio, arq)
    sync_send: float | None = None  #: jobs/s through the sync path (send(), redis.Redis, .delay())
    bulk_enqueue: float | None = None  #: jobs/s through the many-at-once call, where there is one
    #: jobs/s through the async path from ``CONCURRENCY`` coroutines at once
    concurrent_enqueue: float | None = None
    drain: float | None = None  #: jobs/s, first to last handler start
    start: Percentiles | None = None  #: enqueue -> handler start
    result: Percentiles | None = None  #: enqueue -> producer sees the outcome
    rss_mb: float | None = None  #: worker process (tree) at the end
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None


def drain_rate(starts: Sequence[float]) -> float:
    """Jobs per second from the first handler start to the last."""
    span = max(starts) - min(starts)
    return (len(starts) - 1) / span if span > 0 else float("inf")


def on_cpu(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` binding a child process to ``cpu`` (None: no binding)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def pin_server(client: Any, cpu: int) -> None:
    """Bind the Redis server ``client`` talks to (on this machine) to ``cpu``."""
    os.sched_setaffinity(int(client.info("server")["process_id"]), {cpu})


def tree_rss_mb(session: int) -> float:
    """Summed RSS of every process in session ``session`` (the worker and its children)."""
    total_kb = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            # Fields after the parenthesised command: state ppid pgrp session ...
            if int(stat.rsplit(")", 1)[1].split()[3]) != session:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return total_kb / 1024


class Runner:
    """Runs systems against one private Redis with one configuration.

    ``flush`` empties that Redis (FLUSHALL); the runner calls it after the bulk
    phase, so no bulk job is left when the drain starts.
    """

    def __init__(
        self, config: Config, logs: Path, flush: Callable[[], object], pin: bool = False
    ) -> None:
        self.config = config
        self.logs = logs
        self.flush = flush
        #: producers (and Redis, pinned by the runner) on CPU 0, the worker on CPU 1
        self.pin = pin

    def _cpu(self, cpu: int) -> Callable[[], None] | None:
        return on_cpu(cpu if self.pin else None)

    def _env(self, system: System, directory: Path) -> dict[str, str]:
        config = dataclasses.replace(self.config, directory=str(directory), variant=system.variant)
        env = dict(os.environ, BENCH_CONFIG=config.to_env(), BENCH_DIR=str(directory))
        env["PYTHONPATH"] = str(ROOT)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        return env

    def _command(self, python: str, system: System, command: str, env: dict[str, str],
                 timeout: float) -> dict[str, Any]:  # fmt: skip
        directory = Path(env["BENCH_DIR"])
        log = self.logs / f"{system.key}-{command}.log"
        with log.open("wb") as out:
            try:
                process = subprocess.run(
                    [python, "-m", "bench.systems", system.module, command], cwd=ROOT, env=env,
                    stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                    preexec_fn=self._cpu(1 if command == "inproc" else 0),
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"{command} took over {timeout:.0f}s (see {log})") from exc
        if process.returncode != 0:
            raise BenchError(f"{command} exited {process.returncode}: {_tail(log)}")
        report: dict[str, Any] = json.loads((directory / f"{command}.json").read_text())
        return report

    def run(self, system: System, python: str, directory: Path) -> Outcome:
        """Measure ``system``; failures become the outcome's error, never an exception."""
        directory.mkdir(parents=True, exist_ok=True)
        env = self._env(system, directory)
        outcome = Outcome(system)
        if system.bulk:
            self._apart(system, python, directory / "bulk", "enqueue_bulk", outcome)
        if system.concurrent:
            self._apart(system, python, directory / "concurrent", "enqueue_concurrent", outcome)
        try:
            if system.in_process:
                self._inproc(system, python, env, directory, outcome)
            else:
                self._separate(system, python, env, directory, outcome)
        except BenchError as exc:
            outcome.error = "; ".join(filter(None, [outcome.error, str(exc)]))
        return outcome

    def _apart(self, system: System, python: str, directory: Path, command: str,
               outcome: Outcome) -> None:  # fmt: skip
        """``command`` (``enqueue_bulk``, ``enqueue_concurrent``) in its own directory,
        then flush Redis; a failure does not stop the drain, which starts from the
        same empty state either way."""
        directory.mkdir(parents=True, exist_ok=True)
        env = self._env(system, directory)
        try:
            report = self._command(python, system, command, env, 60 + self.config.jobs / 20)
            outcome.bulk_enqueue = report.get("bulk_enqueue", outcome.bulk_enqueue)
            outcome.concurrent_enqueue = report.get(
                "concurrent_enqueue", outcome.concurrent_enqueue
            )
        except BenchError as exc:
            outcome.error = "; ".join(filter(None, [outcome.error, f"{command}: {exc}"]))
        finally:
            self.flush()

    def _inproc(self, system: System, python: str, env: dict[str, str], directory: Path,
                outcome: Outcome) -> None:  # fmt: skip
        timeout = 120 + self.config.jobs / 20 + self.config.latency_jobs
        report = self._command(python, system, "inproc", env, timeout)
        outcome.enqueue, outcome.sync_send = report.get("enqueue"), report.get("sync_send")
        outcome.versions = report["versions"]
        outcome.drain = drain_rate(_starts(directory, DRAIN))
        self._latencies(directory, report["times"], outcome)
        outcome.rss_mb = report["rss_mb"]

    def _separate(self, system: System, python: str, env: dict[str, str], directory: Path,
                  outcome: Outcome) -> None:  # fmt: skip
        jobs, latency_jobs = self.config.jobs, self.config.latency_jobs
        report = self._command(python, system, "enqueue", env, 60 + jobs / 20)
        outcome.enqueue, outcome.sync_send = report.get("enqueue"), report.get("sync_send")
        outcome.versions = report["versions"]
        log = self.logs / f"{system.key}-worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [python, "-m", "bench.systems", system.module, "worker"], cwd=ROOT, env=env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=self._cpu(1),
            )  # fmt: skip
        try:
            starts = self._wait(worker, directory, DRAIN, 60 + jobs / 20, log)
            outcome.drain = drain_rate(starts)
            times = self._command(python, system, "latency", env, 60 + latency_jobs)["times"]
            self._wait(worker, directory, LATENCY, 30, log)
            self._latencies(directory, times, outcome)
            outcome.rss_mb = tree_rss_mb(worker.pid)
        finally:
            _stop(worker)

    def _wait(self, worker: subprocess.Popen[bytes], directory: Path, phase: str,
              timeout: float, log: Path) -> list[float]:  # fmt: skip
        path = recorder.starts_path(directory, phase)
        deadline = time.monotonic() + timeout
        while not path.exists():
            if worker.poll() is not None:
                raise BenchError(f"worker exited {worker.returncode} in {phase}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{phase}: not all jobs started within {timeout:.0f}s (see {log})")
            time.sleep(POLL)
        return _starts(directory, phase)

    @staticmethod
    def _latencies(directory: Path, times: list[list[float]], outcome: Outcome) -> None:
        starts = _starts(directory, LATENCY)
        outcome.start = Percentiles.of([s - t[0] for s, t in zip(starts, times, strict=True)])
        outcome.result = Percentiles.of([t[1] - t[0] for t in times])


def _starts(directory: Path, phase: str) -> list[float]:
    stamps: list[float] = json.loads(recorder.starts_path(directory, phase).read_text())
    return stamps


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group; SIGKILL it after the grace period."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # the group already ended
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):  # then SIGKILL below
            process.wait(timeout=STOP_GRACE)
    # Children (Dramatiq's worker processes) may outlive their parent.
    with contextlib.suppress(ProcessLookupError):  # the group already ended
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_GRACE)


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "(no output)"
