"""Sync and async handlers, retries, Retry(delay=...), timeouts, delays, dict events.

Run from the repository root: python examples/sync_and_async_handlers/run.py
"""

import sys
import tempfile
import time
from pathlib import Path

import django
from django.conf import settings
from django.core.management import call_command

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `workers`, next to this file
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # layerq, if not installed

import layerq


def configure(tmp: Path) -> None:
    settings.configure(
        SECRET_KEY="example-only",
        INSTALLED_APPS=["layerq", "channels"],  # layerq first: its runworker wins
        ASGI_APPLICATION="workers.application",
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "layerq.layers.SQLiteChannelLayer",
                "CONFIG": {"path": tmp / "layerq.sqlite3"},
            }
        },
        # Queue defaults; short backoffs so the example's retries happen at once.
        LAYERQ={"max_attempts": 3, "backoff": 0.05, "backoff_max": 0.2},
    )
    django.setup()


def show(label: str, value: object, expected: object) -> None:
    print(f"{label}: {value!r}")
    assert value == expected, f"expected {expected!r}"


def failure(job: layerq.Job) -> layerq.JobFailed:
    try:
        job.result(timeout=5)
    except layerq.JobFailed as failed:  # carries error_type and error_message
        return failed
    raise AssertionError(f"{job} succeeded")


def main(tmp: Path) -> None:
    configure(tmp)

    from workers import BuildReport, FetchBroken, FetchPage, FetchRateLimited, FetchSlow

    report = BuildReport(sections=["intro", "numbers", "summary"]).send()
    page = FetchPage(url="https://example.com").send()
    broken = FetchBroken(url="https://down.example").send(max_attempts=3)
    limited = FetchRateLimited(url="https://busy.example").send()
    slow = FetchSlow(seconds=5).send(timeout=0.2, max_attempts=1)
    ping = layerq.send("reports", {"type": "reports.ping", "n": 7})  # an untyped dict event
    later = FetchPage(url="https://later.example").send(delay=2.0)
    sent = time.monotonic()

    # --burst: run until no job is ready, then exit. It waits for the retries
    # it schedules itself, but not for jobs their producer delayed.
    call_command("runworker", "reports", "fetch", "--burst")

    show("sync handler", report.result(timeout=5), {"pages": 3})
    show("its last progress", report.record().progress, 1.0)
    show("async handler", page.result(timeout=5), 19)
    show("untyped dict event", ping.result(timeout=5), "pong 7")
    show("Retry(delay=0.2): succeeded on attempt", limited.result(timeout=5), 2)
    for job, error_type, attempts in ((broken, "ConnectionError", 3), (slow, "TimeoutError", 1)):
        show(f"{job.type} raised JobFailed, error_type", failure(job).error_type, error_type)
        show(f"{job.type} attempts", job.record().attempt, attempts)

    show("delay=2.0, after the first burst", later.status().value, "queued")
    time.sleep(max(0.0, 2.0 - (time.monotonic() - sent)))
    call_command("runworker", "fetch", "--burst")
    show("delay=2.0, after a burst 2 s later", later.result(timeout=5), 21)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="layerq-example-") as tmp:
        main(Path(tmp))
