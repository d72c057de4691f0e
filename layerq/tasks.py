"""django.tasks on layerq: ``@task`` functions run as layerq jobs.

``TASKS = {"default": {"BACKEND": "layerq.tasks.LayerqBackend"}}`` makes
``my_task.enqueue(...)`` send a job to the worker channel of the task's queue
(``"tasks." + queue_name``), where :class:`TaskWorker`, routed to that channel
and run by ``runworker``, calls the function: a plain one in the worker's
thread pool, an ``async def`` one in its event loop. The job gets what every
layerq job gets: a lease, retries with backoff, a dead letter after the last
attempt, a record. Its type is ``"layerq.task."`` and the task's module path
(what its log lines and record show); the message holds the call's arguments,
and once it succeeded the record's result holds them with the return value,
so ``get_result()`` can tell the whole TaskResult at any time.

Django 6 has ``django.tasks``; on Django 5.2 the ``django-tasks`` backport
provides the same API, and this module uses whichever is installed.
"""

from __future__ import annotations

import builtins
import os
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core import checks
from django.utils import timezone
from django.utils.module_loading import import_string

from .consumers import AsyncWorkerConsumer, UnknownEventType
from .errors import ConfigurationError, InvalidEvent, JobCancelled
from .jobs import Job, JobRecord, JobStatus
from .layers import require_queue_layer
from .layers.base import require_valid_channel_name
from .producer import asend, send
from .routing import resolve

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
else:
    try:  # Django 6
        from django.tasks import TaskContext, TaskResult, TaskResultStatus
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import (
            InvalidTask,
            InvalidTaskBackend,
            TaskResultDoesNotExist,
        )
        from django.tasks.signals import task_enqueued, task_finished, task_started
        from django.utils.json import normalize_json
    except ImportError:  # Django 5.2 and the django-tasks backport
        from django_tasks import TaskContext, TaskResult, TaskResultStatus
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json

__all__ = ["TYPE_PREFIX", "LayerqBackend", "TaskWorker"]

#: a task's job type: this, then the task's module path
TYPE_PREFIX = "layerq.task."

#: the OPTIONS a LayerqBackend takes, and their defaults
DEFAULT_OPTIONS: dict[str, Any] = {
    "channel_prefix": "tasks.",  # a queue's worker channel: prefix + queue name
    "layer": None,  # channel layer alias (None: LAYERQ's)
    "max_attempts": None,  # None: LAYERQ's
    "timeout": None,  # seconds a call may run (None: LAYERQ's)
}

#: the statuses of a job whose message the layer no longer holds
_NOT_HELD = frozenset({JobStatus.SUCCEEDED, JobStatus.CANCELLED})

#: a job's status as a TaskResult's
_STATUSES = {
    JobStatus.QUEUED: TaskResultStatus.READY,
    JobStatus.RETRYING: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobStatus.FAILED: TaskResultStatus.FAILED,
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}


class _Call(msgspec.Struct, kw_only=True):
    """A task job's fields: the call's arguments, and the TASKS alias that sent it."""

    args: list[Any]
    kwargs: dict[str, Any]
    backend: str


class _Outcome(msgspec.Struct, kw_only=True):
    """A succeeded task job's result: its return value, and the call (whose message
    the layer no longer holds)."""

    return_value: Any
    args: list[Any]
    kwargs: dict[str, Any]


class LayerqBackend(BaseTaskBackend):
    """A ``django.tasks`` backend whose tasks run on layerq workers.

    OPTIONS: ``channel_prefix`` (``"tasks."``), ``layer`` (a CHANNEL_LAYERS
    alias), ``max_attempts`` and ``timeout`` (the LAYERQ defaults when unset).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = set(self.options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise InvalidTaskBackend(
                f"TASKS[{alias!r}]: unknown OPTIONS {sorted(unknown)}; "
                f"LayerqBackend takes {sorted(DEFAULT_OPTIONS)}"
            )
        options = {**DEFAULT_OPTIONS, **self.options}
        self.channel_prefix = str(options["channel_prefix"])
        self.layer: str | None = options["layer"]
        self.max_attempts: int | None = options["max_attempts"]
        self.timeout: float | None = options["timeout"]
        for queue in self.queues:
            self._channel_or_error(queue, InvalidTaskBackend, f"TASKS[{alias!r}] QUEUES")

    def channel(self, queue_name: str) -> str:
        """The worker channel of ``queue_name``."""
        return self.channel_prefix + queue_name

    def _channel_or_error(self, queue: str, error: type[Exception], where: str) -> str:
        name = self.channel(queue)
        try:
            require_valid_channel_name(name)
        except TypeError as exc:
            raise error(f"{where}: queue {queue!r} makes channel {name!r}: {exc}") from exc
        return name

    def validate_task(self, task: Task[Any, Any]) -> None:
        super().validate_task(task)
        self._channel_or_error(task.queue_name, InvalidTask, task.module_path)

    # --- enqueue --------------------------------------------------------------------

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        channel, event, options = self._send(task, args, kwargs)
        return self._enqueued(task, event, send(channel, event, **options))

    async def aenqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        channel, event, options = self._send(task, args, kwargs)
        return self._enqueued(task, event, await asend(channel, event, **options))

    def _send(
        self, task: Task[Any, Any], args: Any, kwargs: Any
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The channel, event and options of the send of a call of ``task``."""
        self.validate_task(task)
        event = {
            "type": TYPE_PREFIX + task.module_path,
            "args": normalize_json(list(args)),
            "kwargs": normalize_json(dict(kwargs)),
            "backend": self.alias,
        }
        options = {
            "delay": _seconds_until(task.run_after),
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "layer": self.layer,
        }
        return self.channel(task.queue_name), event, options

    def _enqueued(self, task: Task[Any, Any], event: dict[str, Any], job: Job) -> TaskResult[Any]:
        result = _task_result(task, job.id, self.alias, event["args"], event["kwargs"])
        _set(result, enqueued_at=timezone.now())
        task_enqueued.send(type(self), task_result=result)
        return result

    # --- results --------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The TaskResult of task job ``result_id``; TaskResultDoesNotExist when there
        is no such job (or its record expired), or it is not a task's."""
        layer = require_queue_layer(self.layer, "task results")
        for _ in range(2):
            record = _task_record(result_id, layer.get_record_sync(result_id))
            if record.status in _NOT_HELD:
                return self._from_record(record, None)
            held = layer.get_message_sync(result_id)
            if held is not None:
                break  # else it ended between the two reads: read its record again
        return self._from_record(record, held)

    async def aget_result(self, result_id: str) -> TaskResult[Any]:
        """:meth:`get_result` from async code."""
        layer = require_queue_layer(self.layer, "task results")
        for _ in range(2):
            record = _task_record(result_id, await layer.get_record(result_id))
            if record.status in _NOT_HELD:
                return self._from_record(record, None)
            held = await layer.get_message(result_id)
            if held is not None:
                break
        return self._from_record(record, held)

    def _from_record(self, record: JobRecord, held: dict[str, Any] | None) -> TaskResult[Any]:
        """A TaskResult from a task job's record and its message (None when the layer
        holds none: it succeeded or was cancelled)."""
        task = _load(record.type.removeprefix(TYPE_PREFIX))
        outcome = None
        if record.status is JobStatus.SUCCEEDED:
            outcome = msgspec.convert(record.result, _Outcome)
            args, kwargs, backend = outcome.args, outcome.kwargs, self.alias
        elif held is not None:
            call = msgspec.convert(held, _Call)
            args, kwargs, backend = call.args, call.kwargs, call.backend
        else:  # cancelled: its message, with the arguments, is gone
            args, kwargs, backend = [], {}, self.alias
        result = _task_result(
            task,
            record.id,
            backend,
            args,
            kwargs,
            _STATUSES[record.status],
            worker_ids=[record.channel] * record.attempt,
        )
        _set(
            result,
            enqueued_at=_datetime(record.enqueued_at),
            started_at=_datetime(record.started_at),
            last_attempted_at=_datetime(record.started_at),
            finished_at=_datetime(record.finished_at),
        )
        error = _error(record)
        if error is not None:
            result.errors.append(error)
        if outcome is not None:
            _set(result, _return_value=outcome.return_value)
        return result


def _task_record(result_id: str, record: JobRecord | None) -> JobRecord:
    if record is None:
        raise TaskResultDoesNotExist(f"no task result {result_id} (or its record expired)")
    if not record.type.startswith(TYPE_PREFIX):
        raise TaskResultDoesNotExist(f"job {result_id} is a {record.type!r} job, not a task's")
    return record


def _error(record: JobRecord) -> TaskError | None:
    """The TaskError of a job that failed, is to be retried, or was cancelled."""
    if record.status is JobStatus.CANCELLED:
        path = f"{JobCancelled.__module__}.{JobCancelled.__qualname__}"
        return TaskError(exception_class_path=path, traceback=record.error_message or "")
    if record.error_type is None:
        return None
    path = _exception_path(record.error_type)
    return TaskError(exception_class_path=path, traceback=record.error_message or "")


def _exception_path(name: str) -> str:
    """The path TaskError.exception_class imports: layerq records an error's class
    name; a builtin one is found in ``builtins``, others keep the bare name."""
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return f"builtins.{name}"
    return name


def _seconds_until(when: datetime | None) -> float | None:
    if when is None:
        return None
    return max(0.0, (when - timezone.now()) / timedelta(seconds=1))


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _set(result: TaskResult[Any], **fields: Any) -> None:
    """Set fields of a (frozen) TaskResult, as Django's own backends do."""
    for name, value in fields.items():
        object.__setattr__(result, name, value)


def _task_result(
    task: Task[Any, Any],
    job_id: str,
    backend: str,
    args: list[Any],
    kwargs: dict[str, Any],
    status: TaskResultStatus = TaskResultStatus.READY,
    worker_ids: list[str] | None = None,
) -> TaskResult[Any]:
    return TaskResult(
        task=task,
        id=job_id,
        status=status,
        enqueued_at=None,
        started_at=None,
        last_attempted_at=None,
        finished_at=None,
        args=args,
        kwargs=kwargs,
        backend=backend,
        errors=[],
        worker_ids=worker_ids or [],
    )


def _load(path: str) -> Task[Any, Any]:
    """The Task at ``path``; ImportError when there is none."""
    found = import_string(path)
    if not isinstance(found, Task):
        raise ImportError(f"{path} is not a task (a function decorated with @task)")
    return found


class TaskWorker(AsyncWorkerConsumer):
    """Runs the task jobs sent to its channel: route ``"tasks.<queue>"`` to it.

    A job whose task this worker cannot import is dead-lettered at once, as a
    job of an unknown type is (``manage.py deadletters`` requeues it once the
    worker has the code).
    """

    def layerq_handler(self, message: Mapping[str, Any]) -> tuple[Callable[[Any], Any], Any]:
        event_type = message.get("type")
        if not isinstance(event_type, str) or not event_type.startswith(TYPE_PREFIX):
            raise UnknownEventType(f"TaskWorker runs task jobs only, not {event_type!r}")
        try:
            task = _load(event_type.removeprefix(TYPE_PREFIX))
        except ImportError as exc:
            raise UnknownEventType(f"no task for {event_type!r}: {exc}") from exc
        try:
            call = msgspec.convert(dict(message), _Call)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(f"{event_type}: {exc}") from exc
        handler = self._run_async if iscoroutinefunction(task.func) else self._run_sync
        return handler, (task, call)

    def _run_sync(self, job: tuple[Task[Any, Any], _Call]) -> dict[str, Any]:
        """A plain task function, in the worker's thread pool."""
        task, call = job
        result = self._started(task, call)
        try:
            value = task.func(*_arguments(task, result, call), **call.kwargs)
        except BaseException:
            _finished(result, TaskResultStatus.FAILED)
            raise
        return _succeeded(result, call, value)

    async def _run_async(self, job: tuple[Task[Any, Any], _Call]) -> dict[str, Any]:
        """An ``async def`` task function, in the worker's event loop."""
        task, call = job
        result = self._started(task, call)
        try:
            value = await task.func(*_arguments(task, result, call), **call.kwargs)
        except BaseException:
            _finished(result, TaskResultStatus.FAILED)
            raise
        return _succeeded(result, call, value)

    def _started(self, task: Task[Any, Any], call: _Call) -> TaskResult[Any]:
        job = self.job
        result = _task_result(
            task,
            job.id or "",
            call.backend,
            call.args,
            call.kwargs,
            TaskResultStatus.RUNNING,
            worker_ids=[f"{socket.gethostname()}:{os.getpid()}"] * job.attempt,
        )
        now = timezone.now()
        _set(result, started_at=now, last_attempted_at=now)
        task_started.send(LayerqBackend, task_result=result)
        return result


def _arguments(task: Task[Any, Any], result: TaskResult[Any], call: _Call) -> list[Any]:
    return [TaskContext(task_result=result), *call.args] if task.takes_context else call.args


def _finished(result: TaskResult[Any], status: TaskResultStatus) -> None:
    _set(result, status=status, finished_at=timezone.now())
    task_finished.send(LayerqBackend, task_result=result)


def _succeeded(result: TaskResult[Any], call: _Call, value: Any) -> dict[str, Any]:
    """The job's result: the return value (JSON-able, as Django requires) with the call."""
    try:
        value = normalize_json(value)
    except TypeError:
        _finished(result, TaskResultStatus.FAILED)
        raise
    _set(result, _return_value=value)
    _finished(result, TaskResultStatus.SUCCESSFUL)
    outcome: dict[str, Any] = msgspec.to_builtins(
        _Outcome(return_value=value, args=call.args, kwargs=call.kwargs)
    )
    return outcome


def route_problems(alias: str, params: dict[str, Any]) -> list[checks.CheckMessage]:
    """System check messages for TASKS[alias]: a backend that cannot be built, and
    queues whose worker channel the ASGI routing does not give to a TaskWorker."""
    try:
        backend = import_string(params["BACKEND"])(alias, params)
    except (ImportError, InvalidTaskBackend) as exc:
        return [checks.Error(f"TASKS[{alias!r}]: {exc}", id="layerq.E002")]
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not isinstance(backend, LayerqBackend) or not path:
        return []  # no routing to check (runworker would say the same)
    application = import_string(path)
    problems: list[checks.CheckMessage] = []
    for queue in sorted(backend.queues):
        channel = backend.channel(queue)
        hint = f'Route "{channel}": layerq.tasks.TaskWorker.as_asgi() in the ChannelNameRouter.'
        try:
            route = resolve(application, [channel])[channel]
        except ConfigurationError as exc:
            message = f"TASKS[{alias!r}] queue {queue!r}: {exc}; its tasks would never run"
            problems.append(checks.Warning(message, hint=hint, id="layerq.W001"))
            continue
        if not issubclass(route.consumer_class, TaskWorker):
            message = (
                f"TASKS[{alias!r}] queue {queue!r}: channel {channel!r} is routed to"
                f" {route.consumer_class.__name__}, which is not a TaskWorker"
            )
            problems.append(checks.Warning(message, hint=hint, id="layerq.W002"))
    return problems
