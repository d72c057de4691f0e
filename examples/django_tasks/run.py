"""Enqueue django.tasks functions, run a burst worker, print each task's outcome.

Run from the repository root: python examples/django_tasks/run.py
"""

import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import django
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `project`, next to this file
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # layerq, if not installed

import layerq


def configure(tmp: Path) -> None:
    settings.configure(
        SECRET_KEY="example-only",
        USE_TZ=True,
        INSTALLED_APPS=["layerq", "channels"],  # layerq first: its runworker
        ASGI_APPLICATION="project.application",
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "layerq.layers.SQLiteChannelLayer",
                "CONFIG": {"path": tmp / "layerq.sqlite3"},
            }
        },
        TASKS={
            "default": {
                "BACKEND": "layerq.tasks.LayerqBackend",
                "QUEUES": ["default", "slow"],
                "OPTIONS": {"max_attempts": 3},
            }
        },
        LAYERQ={"backoff": 0.1},  # seconds before the first retry (then doubled)
    )
    django.setup()


def main(tmp: Path) -> None:
    configure(tmp)
    from project import fetch_title, flaky, word_count

    due = timezone.now() + timedelta(seconds=0.5)
    results = [
        word_count.enqueue("the quick brown fox"),
        fetch_title.enqueue("https://example.com"),
        flaky.enqueue(fail_times=2),
        word_count.using(run_after=due).enqueue("later"),  # deferred
    ]
    for result in results:
        print(f"enqueued {result.task.name} {result.args} {result.kwargs}: {result.status}")

    # What `python manage.py runworker tasks.default tasks.slow --burst` runs: every
    # job that is ready (and the retries of those that fail), then it exits.
    call_command("runworker", "tasks.default", "tasks.slow", "--burst")
    deferred = word_count.get_result(results[-1].id)
    print(f"before its run_after, the deferred task is {deferred.status}")
    assert deferred.status == "READY"
    time.sleep(max(0.0, (due - timezone.now()).total_seconds()))
    call_command("runworker", "tasks.default", "--burst")

    for result in results:
        result.refresh()  # what the backend's get_result(result.id) reads now
        print(
            f"{result.task.name}: {result.status} after {result.attempts} attempt(s):"
            f" {result.return_value!r}"
        )
    assert [r.return_value for r in results] == [
        4,
        "Title of https://example.com",
        "done on attempt 3",
        1,
    ]
    # The same job through layerq's own API: its result holds the call and its value.
    print(f"layerq.Job({results[0].id[:8]}...).result() = {layerq.Job(results[0].id).result()}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="layerq-example-") as tmp:
        main(Path(tmp))
