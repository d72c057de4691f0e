"""django.tasks functions of the test project, run by layerq.tasks.TaskWorker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

try:  # Django 6
    from django.tasks import task
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="other")
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task(takes_context=True)
def fail_before(context: Any, attempt: int) -> int:
    """Raises until its ``attempt``-th attempt, which returns the attempt number."""
    if context.attempt < attempt:
        raise ValueError(f"attempt {context.attempt}")
    return int(context.attempt)


@task
def explode(reason: str) -> None:
    raise KeyError(reason)


@task
def unserialisable() -> object:
    return object()


@task
def nap(seconds: float, marker: str) -> str:
    """Marks its run (see tests.app.consumers._mark), then sleeps."""
    from .consumers import _mark

    _mark(marker)
    time.sleep(seconds)
    return marker
