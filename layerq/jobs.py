"""Jobs: the handle a producer gets back, and the record a layer keeps."""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from .errors import JobCancelled, JobFailed, JobNotFound, ResultTimeout


class JobStatus(enum.StrEnum):
    """Where a job is in its life; ``TERMINAL`` ones never change again."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  #: final: the message waits in the dead-letter store
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobRecord(msgspec.Struct, kw_only=True):
    """What a layerq layer remembers about a job."""

    id: str
    type: str
    channel: str
    status: JobStatus
    attempt: int = 0  #: deliveries so far (1 while the first attempt runs)
    max_attempts: int | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None  #: 0.0 .. 1.0, from the handler's self.progress()
    progress_message: str | None = None
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None


def _raise_for(record: JobRecord) -> None:
    if record.status is JobStatus.FAILED:
        raise JobFailed(record.id, record.error_type or "Error", record.error_message or "")
    if record.status is JobStatus.CANCELLED:
        raise JobCancelled(record.id, "Cancelled", record.error_message or "cancelled")


class Job:
    """A sent job: its id at once, its status and result when asked.

    ``Job(job_id)`` rebuilds a handle from a stored id; ``channel`` and ``type``
    are informative only (records are found by id).
    """

    __slots__ = ("channel", "id", "layer_alias", "type")

    def __init__(
        self,
        id: str,
        *,
        channel: str | None = None,
        type: str | None = None,
        layer_alias: str | None = None,
    ) -> None:
        self.id = id
        self.channel = channel
        self.type = type
        self.layer_alias = layer_alias

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.type or '?'} on {self.channel or '?'}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _layer(self) -> Any:
        from .layers import require_queue_layer

        return require_queue_layer(self.layer_alias, "job records")

    # --- records -----------------------------------------------------------

    def record(self) -> JobRecord:
        """The job's record now; JobNotFound if there is none (or it expired)."""
        record = self._layer().get_record_sync(self.id)
        if record is None:
            raise JobNotFound(f"no record for job {self.id}")
        return record  # type: ignore[no-any-return]

    async def arecord(self) -> JobRecord:
        """Async :meth:`record`."""
        record = await self._layer().get_record(self.id)
        if record is None:
            raise JobNotFound(f"no record for job {self.id}")
        return record  # type: ignore[no-any-return]

    def status(self) -> JobStatus:
        """queued, running, retrying, succeeded, failed or cancelled."""
        return self.record().status

    async def astatus(self) -> JobStatus:
        """Async :meth:`status`."""
        return (await self.arecord()).status

    # --- results -----------------------------------------------------------

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the outcome; return the handler's value or raise JobFailed."""
        return self._outcome(self._layer().wait_record_sync(self.id, timeout), timeout)

    async def aresult(self, timeout: float | None = None) -> Any:
        """Async :meth:`result`."""
        return self._outcome(await self._layer().wait_record(self.id, timeout), timeout)

    def _outcome(self, record: JobRecord | None, timeout: float | None) -> Any:
        if record is None:
            raise JobNotFound(f"no record for job {self.id}")
        if not record.status.is_terminal:
            raise ResultTimeout(f"job {self.id} is still {record.status} after {timeout}s")
        _raise_for(record)
        return record.result

    def cancel(self) -> bool:
        """Cancel the job if it has not started; True when it was cancelled."""
        return bool(self._layer().cancel_sync(self.id))

    async def acancel(self) -> bool:
        """Async :meth:`cancel`."""
        return bool(await self._layer().cancel(self.id))
