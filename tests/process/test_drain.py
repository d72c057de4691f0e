"""A thousand-job drain survives a SIGKILLed worker and a Redis restart."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

import layerq
from layerq.jobs import Job, JobStatus
from layerq.testing import RedisServer
from tests.app.events import Sleep
from tests.process.conftest import ROOT, runs, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

JOBS = 1000
CONCURRENCY = 8


def all_succeeded(jobs: list[Job]) -> bool:
    """True once every job's record says succeeded (checks stop at the first that does not)."""
    return all(job.status() is JobStatus.SUCCEEDED for job in jobs)


def report(capsys: pytest.CaptureFixture[str], what: str, extra_runs: int) -> None:
    """Print the duplicate count into the test log, where CI shows it."""
    with capsys.disabled():
        print(f"\n[{what}] handler runs beyond one per job: {extra_runs} of {JOBS} jobs")


@pytest.mark.parametrize("prefetch", [0, 8])
def test_sigkill_in_a_1000_job_drain_loses_nothing(
    shared_layer: Any, start_worker: Any, capsys: pytest.CaptureFixture[str], prefetch: int
) -> None:
    """Kill -9 a worker mid-drain: every job succeeds, and only the jobs leased at the
    kill may run twice: at most concurrency + prefetch of them (a prefetched job may
    have started, and even finished, since the slot before it freed while that
    slot's ack was still on its way)."""
    jobs = [Sleep(seconds=0.005, marker=f"d{i}").send() for i in range(JOBS)]
    victim = start_worker("slow", "--concurrency", str(CONCURRENCY), "--prefetch", str(prefetch))
    wait_until(lambda: len(runs(shared_layer["runs"])) >= JOBS // 3, 60, "a third of the drain")
    victim.proc.kill()
    victim.wait(10)
    rescuer = start_worker("slow", "--concurrency", str(CONCURRENCY))
    wait_until(lambda: all_succeeded(jobs), 90, "every job to succeed")
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait(30) == 0, rescuer.output()
    ran = Counter(runs(shared_layer["runs"]))
    assert set(ran) == {f"d{i}" for i in range(JOBS)}, "no job may be missing"
    extra = sum(ran.values()) - JOBS
    report(capsys, f"{shared_layer['backend']} SIGKILL, prefetch {prefetch}", extra)
    assert extra <= CONCURRENCY + prefetch, "only the jobs leased at the kill may run again"


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis that keeps its data across a restart (AOF, fsync always)."""
    args = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    with RedisServer(extra_args=args) as server:
        yield server


def test_redis_restart_mid_drain_loses_no_acknowledged_job(
    durable_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis restarts while a producer sends and a worker drains: every sent job succeeds."""
    import os

    from tests.process.conftest import WorkerProcess

    layers = {
        "default": {
            "BACKEND": "layerq.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [durable_redis.url], "prefix": "restart"},
        }
    }
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT),
        "LAYERQ_TEST_REDIS_URL": durable_redis.url, "LAYERQ_TEST_REDIS_PREFIX": "restart",
        "LAYERQ_TEST_LEASE": "2", "LAYERQ_TEST_RUNS": str(tmp_path / "runs.txt"),
    }  # fmt: skip
    sent: dict[str, Job] = {}
    refused: list[str] = []

    def produce() -> None:
        for index in range(JOBS):
            time.sleep(0.002)  # keep sending while Redis goes away and comes back
            try:
                sent[f"r{index}"] = Sleep(seconds=0.0, marker=f"r{index}").send()
            except layerq.TransportError as exc:
                refused.append(str(exc))

    with override_settings(CHANNEL_LAYERS=layers):
        worker = WorkerProcess(["slow", "--concurrency", str(CONCURRENCY)], env, tmp_path / "w.log")
        try:
            producer = threading.Thread(target=produce)
            producer.start()
            wait_until(lambda: len(runs(tmp_path / "runs.txt")) >= 200, 60, "the drain to start")
            durable_redis.restart()
            producer.join(120)
            assert not producer.is_alive()
            assert refused or len(sent) == JOBS
            wait_until(lambda: all_succeeded(list(sent.values())), 120, "every sent job to succeed")
            worker.signal(signal.SIGTERM)
            assert worker.wait(30) == 0, worker.output()
        finally:
            worker.stop()
    ran = Counter(runs(tmp_path / "runs.txt"))
    assert len(sent) + len(refused) == JOBS
    assert set(sent) <= set(ran), "every job sent ran"
    report(capsys, f"redis restart ({len(refused)} sends refused)", sum(ran.values()) - len(ran))


def test_several_worker_processes_never_run_a_job_twice(
    shared_layer: Any, start_worker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four workers on one channel share 1000 jobs: each runs exactly once (channels_redis#163)."""
    jobs = [Sleep(seconds=0.001, marker=f"s{i}").send() for i in range(JOBS)]
    workers = [start_worker("slow", "--concurrency", "4") for _ in range(4)]
    wait_until(lambda: len(runs(shared_layer["runs"])) >= JOBS, 90, "every job to run")
    wait_until(lambda: all_succeeded(jobs), 60, "every job to succeed")
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0, worker.output()
    ran = Counter(runs(shared_layer["runs"]))
    report(capsys, f"{shared_layer['backend']} 4 workers, no faults", sum(ran.values()) - JOBS)
    assert set(ran) == {f"s{i}" for i in range(JOBS)}
    assert max(ran.values()) == 1, "a job ran twice without any fault"
