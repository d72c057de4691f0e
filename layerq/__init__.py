"""layerq: a background task queue for Django built on Channels channel layers.

Importing layerq reads no settings and opens no connection.
"""

from __future__ import annotations

from .consumers import AsyncWorkerConsumer, UnknownEventType, WorkerConsumer
from .errors import (
    ConfigurationError,
    InvalidEvent,
    JobCancelled,
    JobFailed,
    JobNotFound,
    LayerqError,
    QueueFull,
    ResultTimeout,
    Retry,
    TransportError,
    Unsupported,
)
from .events import Event
from .jobs import Job, JobRecord, JobStatus
from .notify import JobEventsConsumer, user_group
from .producer import asend, asend_many, send, send_many

__all__ = [
    "AsyncWorkerConsumer",
    "ConfigurationError",
    "Event",
    "InvalidEvent",
    "Job",
    "JobCancelled",
    "JobEventsConsumer",
    "JobFailed",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "LayerqError",
    "QueueFull",
    "ResultTimeout",
    "Retry",
    "TransportError",
    "UnknownEventType",
    "Unsupported",
    "WorkerConsumer",
    "asend",
    "asend_many",
    "send",
    "send_many",
    "user_group",
]
__version__ = "0.1.0"
