"""A user's websocket receives their job's started, progress and succeeded events.

Run from the repository root: python examples/notify_browser/run.py
"""

import asyncio
import json
import sys
import tempfile
from pathlib import Path

import django
from channels.testing import WebsocketCommunicator
from django.conf import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `project`, next to this file
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # layerq, if not installed

import layerq
from layerq.runtime import Worker


def configure(tmp: Path) -> None:
    settings.configure(
        SECRET_KEY="example-only",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "layerq",  # before "channels": its runworker replaces Channels' one
            "channels",
        ],
        ASGI_APPLICATION="project.application",
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "layerq.layers.SQLiteChannelLayer",
                "CONFIG": {"path": tmp / "layerq.sqlite3"},
            }
        },
    )
    django.setup()


async def main() -> None:
    from django.contrib.auth.models import User
    from project import ExportCsv, application

    # In a browser, AuthMiddlewareStack finds the user from the session cookie;
    # here the test communicator hands it over directly.
    user = User(pk=42, username="ada")
    browser = WebsocketCommunicator(application, "/ws/jobs/")
    browser.scope["user"] = user
    connected, _ = await browser.connect()
    assert connected

    job = await ExportCsv(rows=300).asend(notify=layerq.user_group(user))
    # What `manage.py runworker exports --burst` runs, here in this event loop.
    await Worker(application, ["exports"], burst=True).run()

    kinds = []
    while not kinds or kinds[-1] not in ("succeeded", "failed"):
        message = await browser.receive_json_from(timeout=5)
        print(json.dumps(message))
        assert message["job"]["id"] == job.id
        kinds.append(message["event"])
    await browser.disconnect()
    assert kinds == ["started", "progress", "progress", "progress", "succeeded"], kinds
    assert await job.aresult(timeout=5) == {"url": "/media/export.csv"}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="layerq-example-") as tmp:
        configure(Path(tmp))
        asyncio.run(main())
