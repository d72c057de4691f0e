"""The project code: @task functions and the routing that runs them on layerq."""

import asyncio
from typing import Any

from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.core.asgi import get_asgi_application

from layerq.tasks import TaskWorker

try:  # Django 6
    from django.tasks import task
except ImportError:  # Django 5.2: pip install django-tasks (the backport)
    from django_tasks import task


@task
def word_count(text: str) -> int:
    """A plain function: runs in the worker's thread pool."""
    return len(text.split())


@task(queue_name="slow")
async def fetch_title(url: str) -> str:
    """An async def function: awaited in the worker's event loop."""
    await asyncio.sleep(0.01)  # stands in for an HTTP request
    return f"Title of {url}"


@task(takes_context=True)
def flaky(context: Any, fail_times: int) -> str:
    """Fails its first ``fail_times`` attempts: layerq retries it with backoff."""
    if context.attempt <= fail_times:
        raise ConnectionError(f"attempt {context.attempt}: upstream down")
    return f"done on attempt {context.attempt}"


# A queue's tasks go to the worker channel "tasks.<queue name>"; TaskWorker runs them.
application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "channel": ChannelNameRouter(
            {
                "tasks.default": TaskWorker.as_asgi(),
                "tasks.slow": TaskWorker.as_asgi(),
            }
        ),
    }
)
