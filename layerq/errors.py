"""Every error layerq raises, in one tree.

::

    LayerqError
    ├── ConfigurationError        (also django.core.exceptions.ImproperlyConfigured)
    ├── InvalidEvent              (also ValueError)
    ├── QueueFull                 (also channels.exceptions.ChannelFull)
    ├── TransportError            (also ConnectionError)
    ├── Unsupported
    ├── JobNotFound               (also LookupError)
    ├── ResultTimeout             (also TimeoutError)
    └── JobFailed
        └── JobCancelled

``Retry`` is not an error: a handler raises it to ask for another attempt, and
the worker does not log it as a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from channels.exceptions import ChannelFull
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from .jobs import Job


class LayerqError(Exception):
    """Base class of every error layerq raises."""


class ConfigurationError(LayerqError, ImproperlyConfigured):
    """The LAYERQ or CHANNEL_LAYERS settings, or the routing, are wrong."""


class InvalidEvent(LayerqError, ValueError):
    """An event failed validation; the message names the field."""


class QueueFull(LayerqError, ChannelFull):  # type: ignore[misc]
    """The channel is at capacity; the message was not sent.

    From :func:`layerq.send_many`: ``sent`` holds the jobs that were stored
    (they will run) and ``refused`` those that were not, each in send order.
    """

    def __init__(
        self, message: str, *, sent: Sequence[Job] = (), refused: Sequence[Job] = ()
    ) -> None:
        super().__init__(message)
        self.sent = list(sent)
        self.refused = list(refused)


class TransportError(LayerqError, ConnectionError):
    """The channel layer's storage could not be reached after bounded retries.

    From a send, what became of its jobs: ``sent`` holds the jobs stored
    before the fault (they will run), ``refused`` those refused as full, and
    ``unconfirmed`` the rest, which the fault may have caught before or after
    they were stored (a single send's job is there). Once the layer answers
    again, ``job.status()`` of an unconfirmed job tells: JobNotFound means
    it was not stored. Each list is in send order.
    """

    def __init__(
        self,
        message: str = "",
        *,
        sent: Sequence[Job] = (),
        refused: Sequence[Job] = (),
        unconfirmed: Sequence[Job] = (),
    ) -> None:
        super().__init__(message)
        self.sent = list(sent)
        self.refused = list(refused)
        self.unconfirmed = list(unconfirmed)
        #: set by a layer's enqueue_many: whether each of the batch's first
        #: messages was stored, as far as the fault lets it know
        self.stored: list[bool] = []


class Unsupported(LayerqError):
    """The configured channel layer cannot do this (basic mode)."""


class JobNotFound(LayerqError, LookupError):
    """No record exists for this job id (never sent, or its record expired)."""


class ResultTimeout(LayerqError, TimeoutError):
    """The job did not finish within the time given to ``result()``."""


class JobFailed(LayerqError):
    """The job ended without a result; carries the remote error's type and message."""

    def __init__(self, job_id: str, error_type: str, message: str) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.error_message = message


class JobCancelled(JobFailed):
    """The job was cancelled before it ran."""


class Retry(Exception):
    """Raised by a handler to run the job again after ``delay`` seconds."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason
