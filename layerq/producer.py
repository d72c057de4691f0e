"""Sending jobs: ``send`` from sync code, ``asend`` from async code.

The job id is made here, before anything is stored, so a caller can keep it
(in a model, in a response) even when the send waits for a transaction.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import structlog
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from django.db import transaction

from . import clock, signing
from .conf import get_settings
from .errors import InvalidEvent, QueueFull, TransportError, Unsupported
from .events import (
    ENVELOPE_KEY,
    Envelope,
    Event,
    build_message,
    check_plain,
    event_class,
    new_job_id,
    validate_fields,
)
from .jobs import Job, JobRecord, JobStatus
from .layers import get_layer, is_queue_layer
from .layers.base import require_valid_channel_name

log = structlog.get_logger("layerq")
_names = BaseChannelLayer()

Notify = str | Sequence[str] | None


class _Prepared:
    """A validated message ready to hand to a layer."""

    __slots__ = ("channel", "delay", "job", "message", "record")

    def __init__(
        self, job: Job, channel: str, message: dict[str, Any], record: JobRecord, delay: float
    ) -> None:
        self.job = job
        self.channel = channel
        self.message = message
        self.record = record
        self.delay = delay


def _fields(event: Event | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(event, Event):
        return type(event).event_type, event.fields()
    if not isinstance(event, Mapping):
        raise InvalidEvent(f"an event must be a layerq.Event or a dict, not {type(event)!r}")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidEvent("a dict event needs a 'type' string")
    if ENVELOPE_KEY in event:
        raise InvalidEvent(f"{ENVELOPE_KEY!r} is reserved for layerq's envelope")
    raw = {k: v for k, v in event.items() if k != "type"}
    cls = event_class(event_type)
    if cls is not None:
        return event_type, validate_fields(cls, raw)
    check_plain(raw, "$")
    return event_type, raw


def _groups(notify: Notify) -> list[str]:
    if notify is None:
        return []
    groups = [notify] if isinstance(notify, str) else list(notify)
    for group in groups:
        try:
            _names.require_valid_group_name(group)
        except TypeError as exc:
            raise InvalidEvent(f"notify: {exc} (got {group!r})") from exc
    return groups


def prepare(
    channel: str,
    event: Event | Mapping[str, Any],
    *,
    notify: Notify = None,
    delay: float | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    layer: str | None = None,
) -> _Prepared:
    """Validate everything and build the message; stores nothing."""
    try:
        require_valid_channel_name(channel)
    except TypeError as exc:
        raise InvalidEvent(f"channel: {exc} (got {channel!r})") from exc
    if "!" in channel:
        raise InvalidEvent("jobs go to named worker channels, not process-specific '!' ones")
    if delay is not None and delay < 0:
        raise InvalidEvent("delay must be >= 0 seconds")
    if max_attempts is not None and max_attempts < 1:
        raise InvalidEvent("max_attempts must be >= 1")
    if timeout is not None and timeout <= 0:
        raise InvalidEvent("timeout must be > 0 seconds")
    event_type, fields = _fields(event)
    now = clock.now()
    envelope = Envelope(
        id=new_job_id(),
        enqueued=now,
        notify=_groups(notify),
        max_attempts=max_attempts,
        timeout=timeout,
    )
    message = build_message(event_type, fields, envelope)
    if get_settings().sign:
        message[ENVELOPE_KEY]["sig"] = signing.sign(message)
    alias = layer or get_settings().layer
    job = Job(envelope.id, channel=channel, type=event_type, layer_alias=alias)
    record = JobRecord(
        id=job.id,
        type=event_type,
        channel=channel,
        status=JobStatus.QUEUED,
        max_attempts=max_attempts,
        enqueued_at=now,
    )
    return _Prepared(job, channel, message, record, delay or 0.0)


def _deliver_sync(prepared: _Prepared) -> None:
    layer = get_layer(prepared.job.layer_alias)
    try:
        if is_queue_layer(layer):
            layer.enqueue_sync(prepared.channel, prepared.message, prepared.record, prepared.delay)
        else:
            _basic_sync(layer, prepared)
    except TransportError as exc:
        # The fault may have come after the job was stored: the error names it.
        exc.unconfirmed = [prepared.job]
        raise
    _queued(prepared)


async def _deliver(prepared: _Prepared) -> None:
    layer = get_layer(prepared.job.layer_alias)
    try:
        if is_queue_layer(layer):
            await layer.enqueue(prepared.channel, prepared.message, prepared.record, prepared.delay)
        else:
            await _basic(layer, prepared)
    except TransportError as exc:
        exc.unconfirmed = [prepared.job]  # as in _deliver_sync
        raise
    _queued(prepared)


def _basic_sync(layer: Any, prepared: _Prepared) -> None:
    with _basic_send(layer, prepared):
        async_to_sync(layer.send)(prepared.channel, prepared.message)


async def _basic(layer: Any, prepared: _Prepared) -> None:
    with _basic_send(layer, prepared):
        await layer.send(prepared.channel, prepared.message)


@contextlib.contextmanager
def _basic_send(layer: object, prepared: _Prepared) -> Iterator[None]:
    """Around a plain Channels send: refuse what basic mode cannot do; full is QueueFull."""
    if prepared.delay:
        raise Unsupported(f"delay needs a layerq channel layer; {type(layer).__name__} has none")
    try:
        yield
    except ChannelFull as exc:
        raise QueueFull(f"channel {prepared.channel!r} is at capacity") from exc


def _queued(prepared: _Prepared) -> None:
    # Unconfigured, structlog prints every level to stdout: a web process that
    # never set it up would get a debug line per send (and pay ~6x for it).
    if not structlog.is_configured():
        return
    log.debug(
        "job.queued",
        job_id=prepared.job.id,
        type=prepared.job.type,
        channel=prepared.channel,
        delay=prepared.delay,
    )


def send(
    channel: str,
    event: Event | Mapping[str, Any],
    *,
    notify: Notify = None,
    delay: float | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    on_commit: bool = False,
    using: str | None = None,
    layer: str | None = None,
) -> Job:
    """Enqueue ``event`` on ``channel`` from sync code and return its Job at once.

    ``notify``: group name(s) told about progress and the outcome.
    ``delay``: seconds before the job may run. ``max_attempts``, ``timeout``:
    override the LAYERQ defaults for this job. ``on_commit``: send when the
    current transaction of database ``using`` commits (at once outside one).
    Raises InvalidEvent for bad input and QueueFull when the channel is full.
    """
    prepared = prepare(
        channel,
        event,
        notify=notify,
        delay=delay,
        max_attempts=max_attempts,
        timeout=timeout,
        layer=layer,
    )
    if on_commit:
        transaction.on_commit(functools.partial(_deliver_sync, prepared), using=using)
    else:
        _deliver_sync(prepared)
    return prepared.job


async def asend(
    channel: str,
    event: Event | Mapping[str, Any],
    *,
    notify: Notify = None,
    delay: float | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    layer: str | None = None,
) -> Job:
    """Enqueue ``event`` on ``channel`` from async code; see :func:`send`."""
    prepared = prepare(
        channel,
        event,
        notify=notify,
        delay=delay,
        max_attempts=max_attempts,
        timeout=timeout,
        layer=layer,
    )
    await _deliver(prepared)
    return prepared.job


def send_many(
    events: Iterable[Event | Mapping[str, Any]],
    *,
    channel: str | None = None,
    notify: Notify = None,
    delay: float | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    on_commit: bool = False,
    using: str | None = None,
    layer: str | None = None,
) -> list[Job]:
    """Enqueue many events at once from sync code; their Jobs, in order.

    Each event goes to ``channel``, else to its Event class's channel (a dict
    event needs ``channel``). Every event is validated before anything is
    stored; then each channel's jobs are stored many per round trip (Redis)
    or transaction (SQLite). The options are :func:`send`'s, for every job.
    Each job stands alone: when a channel fills up, what was stored stays
    stored and QueueFull is raised with ``sent`` and ``refused``. Likewise a
    TransportError (the layer unreachable past its retries) may come after
    some of the jobs were stored: its ``sent``, ``refused`` and
    ``unconfirmed`` say which.
    """
    batch = _prepare_many(events, channel, notify, delay, max_attempts, timeout, layer)
    if on_commit:
        transaction.on_commit(functools.partial(_deliver_many_sync, batch), using=using)
    else:
        _deliver_many_sync(batch)
    return [prepared.job for prepared in batch]


async def asend_many(
    events: Iterable[Event | Mapping[str, Any]],
    *,
    channel: str | None = None,
    notify: Notify = None,
    delay: float | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    layer: str | None = None,
) -> list[Job]:
    """Enqueue many events at once from async code; see :func:`send_many`."""
    batch = _prepare_many(events, channel, notify, delay, max_attempts, timeout, layer)
    tally = _Tally(batch)
    for target, group in _by_channel(batch):
        found = get_layer(target.job.layer_alias)
        with tally.channel(group) as stored:
            if is_queue_layer(found):
                items = [(prepared.message, prepared.record) for prepared in group]
                stored += await found.enqueue_many(target.channel, items, target.delay)
            else:
                stored += await _basic_many(found, group)
    tally.refuse()
    return [prepared.job for prepared in batch]


def _prepare_many(
    events: Iterable[Event | Mapping[str, Any]],
    channel: str | None,
    notify: Notify,
    delay: float | None,
    max_attempts: int | None,
    timeout: float | None,
    layer: str | None,
) -> list[_Prepared]:
    if isinstance(events, Event | Mapping | str | bytes):
        raise InvalidEvent("send_many takes an iterable of events (a list, say), not one event")
    batch = []
    for event in events:
        if channel is not None:
            target = channel
        elif isinstance(event, Event):
            target = type(event)._channel()
        else:
            raise InvalidEvent("a dict event has no default channel; pass channel=")
        batch.append(
            prepare(
                target,
                event,
                notify=notify,
                delay=delay,
                max_attempts=max_attempts,
                timeout=timeout,
                layer=layer,
            )
        )
    return batch


def _by_channel(batch: list[_Prepared]) -> Iterator[tuple[_Prepared, list[_Prepared]]]:
    """The jobs of each channel, in send order: (the first, all of them)."""
    groups: dict[str, list[_Prepared]] = {}
    for prepared in batch:
        groups.setdefault(prepared.channel, []).append(prepared)
    for group in groups.values():
        yield group[0], group


def _deliver_many_sync(batch: list[_Prepared]) -> None:
    tally = _Tally(batch)
    for target, group in _by_channel(batch):
        found = get_layer(target.job.layer_alias)
        with tally.channel(group) as stored:
            if is_queue_layer(found):
                items = [(prepared.message, prepared.record) for prepared in group]
                stored += found.enqueue_many_sync(target.channel, items, target.delay)
            else:
                # One trip to an event loop for the batch, not one per message.
                stored += async_to_sync(_basic_many)(found, group)
    tally.refuse()


class _Tally:
    """What became of each job of a send_many, one channel after another."""

    def __init__(self, batch: list[_Prepared]) -> None:
        self.batch = batch
        self.outcome: dict[int, bool] = {}  #: id(prepared) -> stored; absent: unknown

    @contextlib.contextmanager
    def channel(self, group: list[_Prepared]) -> Iterator[list[bool]]:
        """Around storing one channel's ``group``: the caller appends a flag per
        job to the list it gets. A TransportError leaving the block says which
        jobs of the whole batch were stored, refused, or are unconfirmed."""
        stored: list[bool] = []
        try:
            yield stored
        except TransportError as exc:
            self._note(group[: len(exc.stored)], exc.stored)
            exc.sent = self._jobs(True)
            exc.refused = self._jobs(False)
            exc.unconfirmed = [p.job for p in self.batch if id(p) not in self.outcome]
            raise
        self._note(group, stored)

    def _note(self, group: list[_Prepared], stored: list[bool]) -> None:
        refused = {id(prepared) for prepared in _sorted_out(group, stored)}
        for prepared in group:
            self.outcome[id(prepared)] = id(prepared) not in refused

    def _jobs(self, stored: bool) -> list[Job]:
        return [p.job for p in self.batch if self.outcome.get(id(p)) is stored]

    def refuse(self) -> None:
        """Raise QueueFull when any job was refused; the others were stored."""
        _refuse(self.batch, [p for p in self.batch if self.outcome.get(id(p)) is False])


async def _basic_many(layer: Any, group: list[_Prepared]) -> list[bool]:
    """Basic mode: one Channels send per message; False for each refused as full."""
    stored = []
    for prepared in group:
        try:
            await _basic(layer, prepared)
        except QueueFull:
            stored.append(False)
        else:
            stored.append(True)
    return stored


def _sorted_out(group: list[_Prepared], stored: list[bool]) -> list[_Prepared]:
    """Log the stored jobs of ``group``; the refused ones."""
    refused = []
    for prepared, ok in zip(group, stored, strict=True):
        if ok:
            _queued(prepared)
        else:
            refused.append(prepared)
    return refused


def _refuse(batch: list[_Prepared], refused: list[_Prepared]) -> None:
    if not refused:
        return
    channels = sorted({prepared.channel for prepared in refused})
    out = {id(prepared) for prepared in refused}
    raise QueueFull(
        f"{len(refused)} of {len(batch)} jobs refused: {', '.join(map(repr, channels))}"
        " at capacity; the others were stored",
        sent=[prepared.job for prepared in batch if id(prepared) not in out],
        refused=[prepared.job for prepared in refused],
    )
