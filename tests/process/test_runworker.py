"""runworker as a real process: signals, crashes, leases."""

from __future__ import annotations

import json
import signal
from collections import Counter
from typing import Any

import pytest

from layerq.jobs import JobStatus
from tests.app import tasks
from tests.app.events import Add, Sleep
from tests.process.conftest import runs, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]


def test_runworker_runs_jobs_and_logs_lifecycle_events(
    shared_layer: Any, start_worker: Any
) -> None:
    """runworker runs a job and logs it as JSON: one INFO line a job, job.started at DEBUG."""
    first = Add(a=20, b=22).send()
    quiet = start_worker("math", "--burst")
    assert quiet.wait(30) == 0, quiet.output()
    assert first.result(timeout=1) == 42
    lines = [json.loads(line) for line in quiet.output().splitlines() if line]
    assert [line["event"] for line in lines] == [
        "worker.started",
        "job.succeeded",
        "worker.stopped",
    ]
    succeeded = lines[1]
    assert succeeded["job_id"] == first.id
    assert (succeeded["type"], succeeded["channel"], succeeded["attempt"]) == (
        "math.add",
        "math",
        1,
    )
    assert succeeded["duration"] >= 0
    assert succeeded["queued_for"] >= 0

    second = Add(a=1, b=1).send()
    verbose = start_worker("math", "--burst", "--log-level", "DEBUG")
    assert verbose.wait(30) == 0, verbose.output()
    assert second.result(timeout=1) == 2
    events = [json.loads(line)["event"] for line in verbose.output().splitlines() if line]
    assert [e for e in events if e.startswith("job.")] == ["job.started", "job.succeeded"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_lets_running_jobs_finish_and_leaves_the_rest_queued(
    shared_layer: Any, start_worker: Any, stop: signal.Signals
) -> None:
    """On SIGTERM or SIGINT the jobs in flight finish; jobs not yet started stay queued."""
    # 3 s jobs: the signal must come while the first three run, even on a loaded machine.
    jobs = [Sleep(seconds=3.0, marker=f"j{i}").send() for i in range(6)]
    worker = start_worker("slow", "--concurrency", "3", "--shutdown-timeout", "20")
    wait_until(lambda: len(runs(shared_layer["runs"])) == 3, 20, "three jobs to start")
    worker.signal(stop)
    assert worker.wait(30) == 0, worker.output()
    statuses = [job.status() for job in jobs]
    assert statuses.count(JobStatus.SUCCEEDED) == 3, statuses
    assert statuses.count(JobStatus.QUEUED) == 3, statuses
    assert len(runs(shared_layer["runs"])) == 3, "no job started after SIGTERM"


def test_a_second_stop_signal_returns_running_jobs_at_once(
    shared_layer: Any, start_worker: Any
) -> None:
    """A second SIGTERM does not wait out the grace period: the running jobs go back
    unfinished at once, their attempt not counted."""
    jobs = [Sleep(seconds=30, marker=f"hard{i}").send() for i in range(2)]
    worker = start_worker("slow", "--concurrency", "2", "--shutdown-timeout", "60")
    wait_until(lambda: len(runs(shared_layer["runs"])) == 2, 20, "both jobs to start")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "worker.stopping" in worker.output(), 10, "the first stop to be logged")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()
    for job in jobs:
        record = job.record()
        assert (record.status, record.attempt) == (JobStatus.QUEUED, 0)
    stops = [line for line in map(json.loads, worker.output().splitlines())
             if line["event"] == "worker.stopping"]  # fmt: skip
    assert [line["graceful"] for line in stops] == [True, False]
    assert worker.output().count('"job.returned"') == 2


def test_sigterm_past_the_grace_period_returns_jobs_unfinished(
    shared_layer: Any, start_worker: Any
) -> None:
    """Jobs still running when the grace period ends go back, their attempt not counted."""
    jobs = [Sleep(seconds=30, marker=f"long{i}").send() for i in range(2)]
    worker = start_worker("slow", "--concurrency", "2", "--shutdown-timeout", "0.5")
    wait_until(lambda: len(runs(shared_layer["runs"])) == 2, 20, "both jobs to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()
    for job in jobs:
        record = job.record()
        assert (record.status, record.attempt) == (JobStatus.QUEUED, 0)
    assert "job.returned" in worker.output()


def test_sigkill_mid_job_loses_nothing(shared_layer: Any, start_worker: Any) -> None:
    """After SIGKILL, every job still succeeds once its lease (1 s) expires."""
    jobs = [Sleep(seconds=0.3, marker=f"k{i}").send() for i in range(20)]
    victim = start_worker("slow", "--concurrency", "4")
    wait_until(lambda: len(runs(shared_layer["runs"])) >= 6, 30, "jobs to start")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    killed_after = Counter(runs(shared_layer["runs"]))
    rescuer = start_worker("slow", "--concurrency", "4")
    wait_until(
        lambda: all(job.status() is JobStatus.SUCCEEDED for job in jobs), 60, "all jobs to succeed"
    )
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait(30) == 0, rescuer.output()
    ran = Counter(runs(shared_layer["runs"]))
    assert set(ran) == {f"k{i}" for i in range(20)}
    assert sum(ran.values()) - 20 <= 4, "only jobs in flight at the kill may run twice"
    assert "job.reclaimed" in rescuer.output() or sum(killed_after.values()) == 0
    assert all(job.record().attempt in (1, 2) for job in jobs)


def test_sigkill_mid_task_runs_the_django_tasks_again(shared_layer: Any, start_worker: Any) -> None:
    """django.tasks calls in flight at a SIGKILL run again elsewhere after their lease,
    and get_result() tells each one succeeded, after 1 or 2 attempts."""
    results = [tasks.nap.enqueue(0.3, f"t{i}") for i in range(8)]
    victim = start_worker("tasks.default", "--concurrency", "4")
    wait_until(lambda: len(runs(shared_layer["runs"])) >= 2, 30, "tasks to start")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    rescuer = start_worker("tasks.default", "--concurrency", "4")
    wait_until(
        lambda: all(tasks.nap.get_result(r.id).is_finished for r in results),
        60,
        "all tasks to finish",
    )
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait(30) == 0, rescuer.output()
    found = [tasks.nap.get_result(result.id) for result in results]
    assert [(r.status, r.return_value) for r in found] == [
        ("SUCCESSFUL", f"t{i}") for i in range(len(results))
    ]
    # Those running at the kill (0.3 s each, killed once two had begun) ran twice.
    attempts = {r.attempts for r in found}
    assert 2 in attempts
    assert attempts <= {1, 2}
    assert set(runs(shared_layer["runs"])) == {f"t{i}" for i in range(len(results))}


def test_unrouted_channel_is_a_clear_error(shared_layer: Any, start_worker: Any) -> None:
    """runworker for a channel with no consumer exits non-zero and names the channel."""
    worker = start_worker("nowhere")
    assert worker.wait(30) != 0
    assert "no consumer is routed for channel 'nowhere'" in worker.output()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--concurrency=0", "--concurrency must be at least 1"),
        ("--prefetch=-1", "--prefetch must be 0 or more"),
    ],
)
def test_bad_worker_options_are_clear_errors(
    shared_layer: Any, start_worker: Any, option: str, message: str
) -> None:
    """runworker refuses no slots or a negative prefetch, saying which option is wrong."""
    worker = start_worker("math", option)
    assert worker.wait(30) != 0
    assert message in worker.output()


def test_deadletters_command_lists_and_requeues(shared_layer: Any, start_worker: Any) -> None:
    """`manage.py deadletters` shows a failed job's reason and can send it back."""
    from io import StringIO

    from django.core.management import call_command

    from tests.app.events import Fail

    job = Fail(message="disk full").send(max_attempts=1)
    assert start_worker("math", "--burst").wait(30) == 0
    out = StringIO()
    call_command("deadletters", "math", stdout=out)
    [line] = out.getvalue().splitlines()
    letter = json.loads(line)
    assert letter["job_id"] == job.id
    assert "ValueError: disk full" in letter["reason"]
    out = StringIO()
    call_command("deadletters", "math", "--requeue", stdout=out)
    assert "requeued 1" in out.getvalue()
    assert job.status() is JobStatus.QUEUED
