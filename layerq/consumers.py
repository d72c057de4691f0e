"""Worker consumers: Channels consumers whose handlers run jobs.

Dispatch is the Channels rule (``"images.resize"`` -> ``images_resize``); on
top of it the handler's first parameter annotation, when it is an Event
subclass, decides how the message is decoded and validated. The handler's
return value becomes the job's result.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from channels.consumer import AsyncConsumer, SyncConsumer, get_handler_name

from .context import JobContext, current_job
from .errors import InvalidEvent, LayerqError
from .events import Event, decode_event


class UnknownEventType(LayerqError):
    """No handler on the consumer matches the message's ``type``."""


@functools.lru_cache(maxsize=1024)
def _handler_name(event_type: str) -> str:
    """The Channels handler name for ``event_type`` (InvalidEvent when it has none),
    worked out once per type rather than once per job."""
    try:
        return str(get_handler_name({"type": event_type}))
    except ValueError as exc:
        raise InvalidEvent(str(exc)) from exc


def _job() -> JobContext:
    job = current_job.get()
    if job is None:
        raise RuntimeError("progress() is only available inside a handler run by runworker")
    return job


def _event_class(handler: Callable[..., Any]) -> type[Event] | None:
    params = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params:
        raise TypeError(f"handler {handler.__qualname__} must take the event as its argument")
    hints = typing.get_type_hints(handler)
    annotation = hints.get(params[0].name)
    if isinstance(annotation, type) and issubclass(annotation, Event):
        return annotation
    return None


class _WorkerMixin:
    """What both worker consumers share: finding and preparing a handler."""

    #: handler name -> (attribute, event class or None); filled per class on first use
    _layerq_handlers: ClassVar[dict[str, type[Event] | None]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._layerq_handlers = {}

    def layerq_handler(self, message: Mapping[str, Any]) -> tuple[Callable[[Any], Any], Any]:
        """The bound handler for ``message`` and the argument to call it with.

        Raises UnknownEventType, or InvalidEvent when the message does not
        validate as the handler's annotated event class.
        """
        name, handler = find_handler(self, message)
        cache = type(self)._layerq_handlers
        if name not in cache:
            cache[name] = _event_class(handler)
        cls = cache[name]
        return handler, (dict(message) if cls is None else decode_event(cls, message))


def find_handler(consumer: object, message: Mapping[str, Any]) -> tuple[str, Callable[[Any], Any]]:
    """The Channels rule: ``type`` "a.b" is handled by method ``a_b``."""
    event_type = message.get("type")
    if not isinstance(event_type, str):
        raise InvalidEvent("message has no 'type' string")
    name = _handler_name(event_type)
    handler = getattr(consumer, name, None)
    if handler is None or not callable(handler):
        raise UnknownEventType(
            f"{type(consumer).__name__} has no handler {name}() for {message['type']!r}"
        )
    return name, handler


class AsyncWorkerConsumer(_WorkerMixin, AsyncConsumer):  # type: ignore[misc]
    """A Channels AsyncConsumer whose ``async def`` handlers run jobs."""

    @property
    def job(self) -> JobContext:
        """The job being handled."""
        return _job()

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Record the job's progress and tell its notify groups."""
        await _job().progress(fraction, message)


class WorkerConsumer(_WorkerMixin, SyncConsumer):  # type: ignore[misc]
    """A Channels SyncConsumer whose plain ``def`` handlers run jobs in a thread pool."""

    @property
    def job(self) -> JobContext:
        """The job being handled."""
        return _job()

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record the job's progress and tell its notify groups (waits for both)."""
        _job().progress_sync(fraction, message)
