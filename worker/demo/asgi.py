"""ASGI routing of the reference deployment: pages, the job-events websocket, workers.

``daphne demo.asgi:application`` serves ``http`` and ``websocket``;
``manage.py runworker demo`` reads the ``channel`` entry.
"""

import os

import structlog
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
# Django is set up here, before anything below imports models or consumers.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path  # noqa: E402

import layerq  # noqa: E402
from layerq import logs  # noqa: E402

from .consumers import DemoWorker  # noqa: E402

# runworker configures logging from its own options before it imports this
# module; configuring again here would override --log-level and --log-format.
if not structlog.is_configured():
    logs.configure()

application = ProtocolTypeRouter(
    {
        # Static files (layerq.js, the page's css) are served without DEBUG.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("ws/jobs/", layerq.JobEventsConsumer.as_asgi())]))
        ),
        "channel": ChannelNameRouter({"demo": DemoWorker.as_asgi()}),
    }
)
