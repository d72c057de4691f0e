"""The acknowledged-receive extension that makes a channel layer a queue.

A layerq layer is a complete Channels layer (``send``/``receive``/groups/
``flush``), plus the methods below, advertised by ``"layerq"`` in its
``extensions``. The worker uses only these; producers use ``enqueue`` and ``enqueue_many``.

The life of a job message::

    enqueue ──> ready ──claim──> leased ──ack──> gone, record succeeded
                  ^                 │──retry(delay)──> ready later, record retrying
                  │                 │──release──> ready now, attempt not counted
                  └──lease expires──┘──dead_letter──> dead-letter store, record failed

Every transition that touches both a message and its job record is atomic:
a crash between the two must not leave a succeeded record with a message that
runs again, nor an acked message with a running record.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from channels.layers import BaseChannelLayer

from ..errors import QueueFull, TransportError
from ..jobs import JobRecord

EXTENSION = "layerq"

#: one job to store: its message and its queued record
Queued = tuple[dict[str, Any], JobRecord]


@dataclasses.dataclass(slots=True)
class Delivery:
    """One message handed to one worker under a lease."""

    id: str  #: the layer's id for the stored message
    channel: str
    message: dict[str, Any]
    attempt: int  #: 1 on the first delivery; counts deliveries, including reclaims
    token: str  #: identifies this lease; a stale token's ack or retry does nothing
    reclaimed: bool = False  #: an earlier lease expired without an outcome
    job_id: str | None = None  #: from the envelope, when the message had one
    #: False when the claim left the job's record as it was (see QueueLayer.claim):
    #: :meth:`QueueLayer.start` marks it running once the job does start
    marked_running: bool = True
    #: the job record's unchanging fields, encoded as the layer needs them when the
    #: job ends (taken at claim: a handler may change ``message``); b"" if none
    record: bytes = b""


#: called with deliveries as they arrive (see QueueLayer.claim)
Started = Callable[[list[Delivery]], None]


@dataclasses.dataclass(slots=True)
class DeadLetter:
    """A message no worker could handle, with the reason."""

    id: str
    channel: str
    message: dict[str, Any] | None  #: None when the stored bytes could not be decoded
    reason: str
    failed_at: float
    job_id: str | None = None


_names = BaseChannelLayer()
#: channel names that passed Channels' check (bounded: cleared when full)
_valid_channels: set[str] = set()


def require_valid_channel_name(name: Any) -> None:
    """Channels' channel name check (TypeError), remembered for names that pass.

    A send checks its channel more than once (producer, layer), and the
    regular expression costs more than the rest of that bookkeeping.
    """
    if type(name) is str and name in _valid_channels:
        return
    _names.require_valid_channel_name(name)
    if len(_valid_channels) >= 10_000:
        _valid_channels.clear()
    _valid_channels.add(name)


class QueueLayer(BaseChannelLayer, abc.ABC):  # type: ignore[misc]
    """A Channels layer with leases, retries, dead letters and job records."""

    extensions = ["groups", "flush", EXTENSION]

    #: True when a settle (ack, retry, ...) started before a claim always
    #: reaches the store first (one ordered connection): a worker may then free
    #: a job's slot as soon as its ack is under way, and pipeline the next claim
    #: behind it without ever holding more leases than its concurrency.
    settles_precede_claims = False

    def require_valid_channel_name(self, name: Any, receive: bool = False) -> bool:
        """Channels' check; a name that passed once (not for receive) is not checked again."""
        if receive:
            return bool(super().require_valid_channel_name(name, receive=True))
        require_valid_channel_name(name)
        return True

    # --- producer side ------------------------------------------------------

    async def enqueue(
        self, channel: str, message: dict[str, Any], record: JobRecord, delay: float = 0.0
    ) -> None:
        """Store ``message`` (ready after ``delay``) and its queued ``record``, atomically.

        Raises :class:`layerq.QueueFull` at capacity; never drops.
        """
        (stored,) = await self.enqueue_many(channel, [(message, record)], delay)
        if not stored:
            raise QueueFull(f"channel {channel!r} is at capacity")

    def enqueue_sync(
        self, channel: str, message: dict[str, Any], record: JobRecord, delay: float = 0.0
    ) -> None:
        """:meth:`enqueue` for sync code, without an event loop."""
        (stored,) = self.enqueue_many_sync(channel, [(message, record)], delay)
        if not stored:
            raise QueueFull(f"channel {channel!r} is at capacity")

    @abc.abstractmethod
    async def enqueue_many(
        self, channel: str, batch: Sequence[Queued], delay: float = 0.0
    ) -> list[bool]:
        """Store each (message, record) of ``batch`` as :meth:`enqueue` does, in order.

        One flag per item: True stored, False refused because the channel was
        full (nothing of that item stored). Each item stands alone: what was
        stored stays stored when a later one is refused. A job whose message is
        still stored (a send retried) is not stored twice, and counts as stored;
        one sent again after it ended is stored afresh, its new queued record
        replacing the old.
        """

    @abc.abstractmethod
    def enqueue_many_sync(
        self, channel: str, batch: Sequence[Queued], delay: float = 0.0
    ) -> list[bool]:
        """:meth:`enqueue_many` for sync code, without an event loop."""

    # --- worker side --------------------------------------------------------

    @abc.abstractmethod
    async def claim(
        self,
        channels: Sequence[str],
        limit: int,
        lease: float,
        wait: float,
        started: Started | None = None,
        running: int | None = None,
    ) -> list[Delivery]:
        """Lease up to ``limit`` ready messages, waiting up to ``wait`` s for the first.

        Marks each job's record running with the new attempt number; with
        ``running``, only the first ``running`` deliveries' (those that start
        now): the others (a worker's prefetch) are leased with their records as
        they were and ``marked_running=False``, until :meth:`start`. A message whose
        lease expired is ready again (``reclaimed=True`` when claimed).
        ``started``, when given, may be called with deliveries the moment they
        arrive, before this returns (a worker starts their handlers a loop turn
        sooner); they are returned as well, and are not released should this
        call be cancelled after.
        """

    @abc.abstractmethod
    async def start(self, delivery: Delivery) -> bool:
        """Mark the record of a delivery claimed with ``marked_running=False``
        running, as the claim would have (attempt, start time). False (and
        nothing changed) when the lease was lost, or the delivery ended."""

    @abc.abstractmethod
    async def extend(self, deliveries: Sequence[Delivery], lease: float) -> None:
        """Push the leases of ``deliveries`` to now + ``lease`` (heartbeat)."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery, result: Any, ttl: float) -> bool:
        """Remove the message; record succeeded with ``result``, kept ``ttl`` s.

        False (and nothing changed) when the lease was lost to another worker.
        """

    @abc.abstractmethod
    async def retry(
        self, delivery: Delivery, delay: float, error_type: str, error_message: str
    ) -> bool:
        """Return the message, ready after ``delay``; record retrying with the error."""

    @abc.abstractmethod
    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Return messages unrun (shutdown): ready now, the attempt not counted."""

    @abc.abstractmethod
    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        error_type: str,
        error_message: str,
        ttl: float,
    ) -> bool:
        """Move the message to the dead-letter store; record failed, kept ``ttl`` s."""

    # --- records ------------------------------------------------------------

    @abc.abstractmethod
    async def set_progress(self, job_id: str, progress: float, message: str | None) -> None:
        """Store a running job's progress."""

    @abc.abstractmethod
    async def get_record(self, job_id: str) -> JobRecord | None:
        """The job's record, or None."""

    @abc.abstractmethod
    def get_record_sync(self, job_id: str) -> JobRecord | None:
        """:meth:`get_record` for sync code."""

    @abc.abstractmethod
    async def get_message(self, job_id: str) -> dict[str, Any] | None:
        """The job's message while the layer holds it: waiting, delayed, leased or
        dead-lettered; None once it succeeded or was cancelled (or is unknown)."""

    @abc.abstractmethod
    def get_message_sync(self, job_id: str) -> dict[str, Any] | None:
        """:meth:`get_message` for sync code."""

    async def wait_record(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """The record once it is terminal, or as it is when ``timeout`` passes.

        None when there is no record. This default polls (from 0.5 ms, backing
        off to 20 ms); a layer that can be told when a job ends overrides it.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        for pause in _pauses():
            record = await self.get_record(job_id)
            if record is None or record.status.is_terminal:
                return record
            if deadline is not None:
                pause = min(pause, deadline - loop.time())
                if pause <= 0:
                    return record
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_record_sync(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """:meth:`wait_record` for sync code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for pause in _pauses():
            record = self.get_record_sync(job_id)
            if record is None or record.status.is_terminal:
                return record
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
                if pause <= 0:
                    return record
            time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> bool:
        """Remove a job that is still waiting (not leased); record cancelled."""

    @abc.abstractmethod
    def cancel_sync(self, job_id: str) -> bool:
        """:meth:`cancel` for sync code."""

    # --- dead letters -------------------------------------------------------

    @abc.abstractmethod
    async def dead_letters(self, channel: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``channel``."""

    @abc.abstractmethod
    async def requeue_dead(self, channel: str, ids: Sequence[str] | None = None) -> int:
        """Send dead letters back to their channel (all, or ``ids``); their count.

        Requeued jobs start again from attempt 1, with their record queued.
        """

    @abc.abstractmethod
    async def pending(self, channel: str) -> int:
        """Messages stored for ``channel``: ready, delayed and leased."""


def _pauses() -> Iterator[float]:
    """Poll intervals: short at first (most jobs are quick), then backing off."""
    pause = 0.0005
    while True:
        yield pause
        pause = min(pause * 1.5, 0.02)


def is_queue_layer(layer: object) -> bool:
    """True when ``layer`` offers the acknowledged-receive extension."""
    return EXTENSION in getattr(layer, "extensions", ()) and isinstance(layer, QueueLayer)


@contextlib.contextmanager
def stored_so_far(stored: list[bool]) -> Iterator[None]:
    """Around an enqueue_many: a TransportError leaving the block carries the
    flags of the messages known stored (or refused) before the fault."""
    try:
        yield
    except TransportError as exc:
        exc.stored = list(stored)
        raise
