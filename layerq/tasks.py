"""django.tasks on layerq: ``@task`` functions run as layerq jobs.

``TASKS = {"default": {"BACKEND": "layerq.tasks.LayerqBackend"}}`` makes
``my_task.enqueue(...)`` send a job to the worker channel of the task's queue
(``"tasks." + queue_name``), where :class:`TaskWorker`, routed to that channel
and run by ``runworker``, calls the function: a plain one in the worker's
thread pool, an ``async def`` one in its event loop. The job gets what every
layerq job gets: a lease, retries with backoff, a dead letter after the last
attempt, a record with its result.

Django 6 has ``django.tasks``; on Django 5.2 the ``django-tasks`` backport
provides the same API, and this module uses whichever is installed.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction
from django.utils import timezone
from django.utils.module_loading import import_string

from .consumers import AsyncWorkerConsumer
from .context import JobContext
from .events import Event
from .jobs import Job
from .layers.base import require_valid_channel_name
from .producer import asend, send

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
else:
    try:  # Django 6
        from django.tasks import TaskContext, TaskResult, TaskResultStatus
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task
        from django.tasks.exceptions import InvalidTask, InvalidTaskBackend
        from django.tasks.signals import task_enqueued, task_finished, task_started
        from django.utils.json import normalize_json
    except ImportError:  # Django 5.2 and the django-tasks backport
        from django_tasks import TaskContext, TaskResult, TaskResultStatus
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task
        from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json

__all__ = ["AsyncTaskCall", "LayerqBackend", "TaskCall", "TaskWorker"]

#: the OPTIONS a LayerqBackend takes, and their defaults
DEFAULT_OPTIONS: dict[str, Any] = {
    "channel_prefix": "tasks.",  # a queue's worker channel: prefix + queue name
    "layer": None,  # channel layer alias (None: LAYERQ's)
    "max_attempts": None,  # None: LAYERQ's
    "timeout": None,  # seconds a call may run (None: LAYERQ's)
}


class TaskCall(Event, type="layerq.task"):
    """The job of a plain task function: which task, and its arguments."""

    task: str  #: the Task's module path, as ``import_string`` finds it
    args: list[Any]
    kwargs: dict[str, Any]
    backend: str  #: the TASKS alias it was enqueued with


class AsyncTaskCall(TaskCall, type="layerq.atask"):
    """The job of an ``async def`` task function (run in the worker's loop)."""


class LayerqBackend(BaseTaskBackend):
    """A ``django.tasks`` backend whose tasks run on layerq workers.

    OPTIONS: ``channel_prefix`` (``"tasks."``), ``layer`` (a CHANNEL_LAYERS
    alias), ``max_attempts`` and ``timeout`` (the LAYERQ defaults when unset).
    Results stay in layerq's job records: ``layerq.Job(result.id)`` reads them.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = False
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

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        self.validate_task(task)
        call, channel, options = self._call(task, args, kwargs)
        return self._enqueued(task, call, send(channel, call, **options))

    async def aenqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        self.validate_task(task)
        call, channel, options = self._call(task, args, kwargs)
        return self._enqueued(task, call, await asend(channel, call, **options))

    def _call(
        self, task: Task[Any, Any], args: Any, kwargs: Any
    ) -> tuple[TaskCall, str, dict[str, Any]]:
        """The job of a call of ``task``, its channel and the send's options."""
        kind = AsyncTaskCall if iscoroutinefunction(task.func) else TaskCall
        call = kind(
            task=task.module_path,
            args=normalize_json(list(args)),
            kwargs=normalize_json(dict(kwargs)),
            backend=self.alias,
        )
        options: dict[str, Any] = {
            "delay": _seconds_until(task.run_after),
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "layer": self.layer,
        }
        return call, self.channel(task.queue_name), options

    def _enqueued(self, task: Task[Any, Any], call: TaskCall, job: Job) -> TaskResult[Any]:
        result = _task_result(
            task, job.id, self.alias, call.args, call.kwargs, TaskResultStatus.READY
        )
        object.__setattr__(result, "enqueued_at", timezone.now())
        task_enqueued.send(type(self), task_result=result)
        return result


def _seconds_until(when: datetime | None) -> float | None:
    if when is None:
        return None
    return max(0.0, (when - timezone.now()) / timedelta(seconds=1))


def _task_result(
    task: Task[Any, Any],
    job_id: str,
    backend: str,
    args: list[Any],
    kwargs: dict[str, Any],
    status: TaskResultStatus,
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
    """The Task at ``path``; ImportError when there is none (as when the path is missing)."""
    found = import_string(path)
    if not isinstance(found, Task):
        raise ImportError(f"{path} is not a task (a function decorated with @task)")
    return found


class TaskWorker(AsyncWorkerConsumer):
    """Runs the task calls sent to its channel: route ``"tasks.<queue>"`` to it."""

    def layerq_task(self, call: TaskCall) -> Any:
        """A plain task function, in the worker's thread pool."""
        task, result = self._started(call)
        try:
            value = task.func(*_arguments(task, result, call), **call.kwargs)
        except BaseException:
            _finished(result, TaskResultStatus.FAILED)
            raise
        return _succeeded(result, value)

    async def layerq_atask(self, call: AsyncTaskCall) -> Any:
        """An ``async def`` task function, in the worker's event loop."""
        task, result = self._started(call)
        try:
            value = await task.func(*_arguments(task, result, call), **call.kwargs)
        except BaseException:
            _finished(result, TaskResultStatus.FAILED)
            raise
        return _succeeded(result, value)

    def _started(self, call: TaskCall) -> tuple[Task[Any, Any], TaskResult[Any]]:
        task = _load(call.task)
        job: JobContext = self.job
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
        object.__setattr__(result, "started_at", now)
        object.__setattr__(result, "last_attempted_at", now)
        task_started.send(LayerqBackend, task_result=result)
        return task, result


def _arguments(task: Task[Any, Any], result: TaskResult[Any], call: TaskCall) -> list[Any]:
    return [TaskContext(task_result=result), *call.args] if task.takes_context else call.args


def _finished(result: TaskResult[Any], status: TaskResultStatus) -> None:
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())
    task_finished.send(LayerqBackend, task_result=result)


def _succeeded(result: TaskResult[Any], value: Any) -> Any:
    try:
        value = normalize_json(value)
    except TypeError:
        _finished(result, TaskResultStatus.FAILED)
        raise
    object.__setattr__(result, "_return_value", value)
    _finished(result, TaskResultStatus.SUCCESSFUL)
    return value
