"""The ASGI routing of the test project: plain Channels routers."""

import django
from channels.auth import AuthMiddlewareStack
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path

django.setup()

import layerq  # noqa: E402
from layerq.tasks import TaskWorker  # noqa: E402

from .consumers import MathWorker, SlowWorker, SyncWorker  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": AuthMiddlewareStack(
            URLRouter([path("ws/jobs/", layerq.JobEventsConsumer.as_asgi())])
        ),
        "channel": ChannelNameRouter(
            {
                "math": MathWorker.as_asgi(),
                "slow": SlowWorker.as_asgi(),
                "sync": SyncWorker.as_asgi(),
                "tasks.default": TaskWorker.as_asgi(),
                "tasks.other": TaskWorker.as_asgi(),
            }
        ),
    }
)
