"""Typed events and the wire format of a layerq message.

A message is a flat Channels message: ``type``, the event's fields, and one
reserved key, ``"layerq"``, holding the :class:`Envelope`. Everything in it is
plain msgpack-able data, so any Channels consumer can read it.
"""

from __future__ import annotations

import functools
import re
import secrets
import sys
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from .errors import InvalidEvent

if TYPE_CHECKING:
    from .jobs import Job

ENVELOPE_KEY = "layerq"
RESERVED_FIELDS = frozenset({"type", ENVELOPE_KEY})
_TYPE_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*(\.[a-zA-Z0-9_]+)*$")

#: every Event subclass by its ``type``; lets untyped sends be validated too
_registry: dict[str, type[Event]] = {}


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What layerq adds to a message: identity, options and signature."""

    id: str  #: the job id, stable across attempts
    enqueued: float  #: when the producer sent it (epoch seconds)
    notify: list[str] = []  #: groups told about progress and outcome
    max_attempts: int | None = None  #: None: the worker's LAYERQ default
    timeout: float | None = None  #: None: the worker's LAYERQ default
    sig: str | None = None  #: HMAC of the message, see layerq.signing


class EventMeta(msgspec.StructMeta):
    """Takes the ``type=`` and ``channel=`` class keywords of an Event."""

    event_type: str
    event_channel: str | None

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        type: str | None = None,
        channel: str | None = None,
        **kwargs: Any,
    ) -> EventMeta:
        cls: EventMeta = super().__new__(mcls, name, bases, namespace, **kwargs)
        clash = RESERVED_FIELDS.intersection(cls.__struct_fields__)
        if clash:
            raise TypeError(f"{name} declares reserved field(s) {sorted(clash)}")
        if type is not None:
            if not _TYPE_RE.match(type) or type.startswith("_"):
                raise TypeError(f"{name}: invalid event type {type!r} (use dotted names)")
            previous = _registry.get(type)
            if previous is not None and (previous.__module__, previous.__qualname__) != (
                cls.__module__,
                cls.__qualname__,
            ):
                raise TypeError(f"event type {type!r} is already used by {previous!r}")
            cls.event_type = type
            _registry[type] = cls  # type: ignore[assignment]
        if channel is not None:
            cls.event_channel = channel
        return cls


class Event(msgspec.Struct, metaclass=EventMeta, kw_only=True):
    """Base class of typed events: ``class X(Event, type="a.b", channel="c")``."""

    event_type: ClassVar[str]
    event_channel: ClassVar[str | None] = None

    def fields(self) -> dict[str, Any]:
        """The event's fields as validated, msgpack-able builtins."""
        return validate_fields(type(self), msgspec.to_builtins(self))

    def send(self, channel: str | None = None, **options: Any) -> Job:
        """Enqueue this event from sync code; see :func:`layerq.send` for options."""
        job: Job = _producer().send(channel or self._channel(), self, **options)
        return job

    async def asend(self, channel: str | None = None, **options: Any) -> Job:
        """Enqueue this event from async code; see :func:`layerq.send` for options."""
        job: Job = await _producer().asend(channel or self._channel(), self, **options)
        return job

    @classmethod
    def _channel(cls) -> str:
        if cls.event_channel is None:
            raise InvalidEvent(f"{cls.__name__} has no default channel; pass channel=")
        return cls.event_channel


def _producer() -> types.ModuleType:
    # layerq.producer imports this module; an import statement in the
    # method would run the import machinery on every send.
    return sys.modules["layerq.producer"]


def event_class(event_type: str) -> type[Event] | None:
    """The Event subclass registered for ``event_type``, if any."""
    return _registry.get(event_type)


def new_job_id() -> str:
    """A fresh job id: 32 hex characters, unique without coordination."""
    return secrets.token_hex(16)


def validate_fields(cls: type[Event], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` as the fields of ``cls``; raise InvalidEvent naming the field."""
    try:
        event = msgspec.convert(dict(raw), type=cls, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"{cls.__name__}: {exc}") from exc
    fields: dict[str, Any] = msgspec.to_builtins(event)
    if not _scalar_only(cls):
        check_plain(fields, "$")
    return fields


@functools.cache
def _scalar_only(cls: type[Event]) -> bool:
    """True when every field of ``cls`` is a str, int, float, bool, bytes or None
    (or an optional one): its validated fields need no :func:`check_plain`."""
    allowed = {str, int, float, bool, bytes, type(None)}
    for field in msgspec.structs.fields(cls):
        kinds = typing.get_args(field.type) if _is_union(field.type) else (field.type,)
        if not all(kind in allowed for kind in kinds):
            return False
    return True


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def decode_event(cls: type[Event], message: Mapping[str, Any]) -> Event:
    """Build ``cls`` from a received message (envelope and ``type`` ignored)."""
    raw = {k: v for k, v in message.items() if k not in RESERVED_FIELDS}
    try:
        return msgspec.convert(raw, type=cls, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"{cls.__name__}: {exc}") from exc


_PLAIN = (str, int, float, bool, bytes, type(None))


def check_plain(value: Any, path: str) -> None:
    """Refuse what msgpack would not round-trip as Channels reads it.

    Channels decodes with string map keys only: an integer key passes ``send()``
    and fails at receive, after the message has left the queue. Checking here
    turns that into an error the producer sees.
    """
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEvent(f"map key {key!r} at {path} is not a string")
            check_plain(item, f"{path}.{key}")
        return
    raise InvalidEvent(f"value of type {type(value).__name__} at {path} cannot be sent")


def build_message(event_type: str, fields: Mapping[str, Any], envelope: Envelope) -> dict[str, Any]:
    """The flat Channels message for one job."""
    message: dict[str, Any] = {"type": event_type, **fields}
    message[ENVELOPE_KEY] = msgspec.to_builtins(envelope)
    return message


def read_envelope(message: Mapping[str, Any]) -> Envelope:
    """The envelope of a received message; InvalidEvent when absent or malformed."""
    raw = message.get(ENVELOPE_KEY)
    if not isinstance(raw, dict):
        raise InvalidEvent("message has no layerq envelope")
    try:
        return msgspec.convert(raw, type=Envelope)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"malformed envelope: {exc}") from exc
