"""The project code: an event, its worker, and the ASGI routing with the job-events websocket."""

import asyncio

from channels.auth import AuthMiddlewareStack
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path

import layerq


class ExportCsv(layerq.Event, type="exports.csv", channel="exports"):
    rows: int


class ExportWorker(layerq.AsyncWorkerConsumer):
    async def exports_csv(self, event: ExportCsv) -> dict[str, str]:
        for done in range(1, 4):
            await asyncio.sleep(0.01)  # write a third of the rows
            # Stored in the job record and group_send-ed to the job's notify groups.
            await self.progress(done / 3, f"{done * event.rows // 3} rows")
        return {"url": "/media/export.csv"}


application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        # The browser's websocket: AuthMiddlewareStack puts the logged-in user in
        # scope["user"]; JobEventsConsumer joins layerq.user_group(user) only.
        "websocket": AuthMiddlewareStack(
            URLRouter([path("ws/jobs/", layerq.JobEventsConsumer.as_asgi())])
        ),
        "channel": ChannelNameRouter({"exports": ExportWorker.as_asgi()}),
    }
)
