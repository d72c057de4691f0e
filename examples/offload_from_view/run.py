"""Send jobs from Django views, run a burst worker, print each job's outcome.

Run from the repository root: python examples/offload_from_view/run.py
"""

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import django
from django.conf import settings
from django.core import mail
from django.core.management import call_command
from django.db import transaction
from django.test import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `project`, next to this file
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # layerq, if not installed

import layerq


def configure(tmp: Path) -> None:
    settings.configure(
        SECRET_KEY="example-only",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "layerq",  # before "channels": its runworker replaces Channels' one
            "channels",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": tmp / "db.sqlite3"}},
        ROOT_URLCONF="project",
        ASGI_APPLICATION="project.application",
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "layerq.layers.SQLiteChannelLayer",
                "CONFIG": {"path": tmp / "layerq.sqlite3"},
            }
        },
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    )
    django.setup()


def post(client: Client, url: str, data: dict[str, str] | None = None) -> str:
    response = client.post(url, data or {})
    assert response.status_code == 202, response
    print(f"POST {url} -> {response.status_code} {response.content.decode()}")
    return str(response.json()["job_id"])


def main(tmp: Path) -> None:
    configure(tmp)
    call_command("migrate", verbosity=0)

    from project import WelcomeEmail

    client = Client()
    job_ids = [
        post(client, "/signup/", {"username": "ada", "email": "ada@example.com"}),
        post(client, "/users/1/welcome/"),
    ]

    # on_commit=True in a transaction that rolls back sends nothing.
    with contextlib.suppress(RuntimeError), transaction.atomic():
        lost = WelcomeEmail(user_id=1).send(on_commit=True)
        raise RuntimeError("roll back")
    try:
        lost.status()
    except layerq.JobNotFound:
        print(f"rolled back: job {lost.id} was never sent")
    else:
        raise AssertionError("a job sent on_commit in a rolled-back transaction exists")

    # What `python manage.py runworker emails --burst` runs: every ready job, then exit.
    call_command("runworker", "emails", "--burst")

    for job_id in job_ids:
        # A handle for a job id the client got back from the view.
        job = layerq.Job(job_id)
        result = job.result(timeout=5)
        print(f"job {job.id}: {job.status()} {json.dumps(result)}")
        assert result == {"sent_to": "ada@example.com"}
        assert job.status() is layerq.JobStatus.SUCCEEDED
    print(f"outbox: {len(mail.outbox)} email(s) to {sorted({m.to[0] for m in mail.outbox})}")
    assert len(mail.outbox) == 2


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="layerq-example-") as tmp:
        main(Path(tmp))
