"""Telling browsers about jobs: groups, the event payloads, the websocket consumer.

A job sent with ``notify=`` names groups; the worker ``group_send``s
``layerq.job.started``, ``.progress``, ``.retrying``, ``.succeeded`` and
``.failed`` events to them. :class:`JobEventsConsumer` joins a websocket to
its user's own group and forwards those events as JSON.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,60}$")

#: the websocket close code for a connection without an authenticated user
CLOSE_UNAUTHENTICATED = 4401


def user_group(user: Any) -> str:
    """The group that carries the job events of ``user`` (a user object or a pk)."""
    pk = getattr(user, "pk", user)
    if pk is None:
        raise ValueError("user_group() needs a saved, authenticated user")
    key = str(pk)
    if not _SAFE.match(key):
        key = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"layerq.user.{key}"


def job_event(kind: str, job: dict[str, Any]) -> dict[str, Any]:
    """The channel message for one job event (``kind``: started, progress, ...)."""
    return {"type": f"layerq.job.{kind}", "job": job}


class JobEventsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """A JSON websocket that streams the job events of its authenticated user.

    Each message the browser gets is ``{"event": KIND, "job": {...}}`` where
    the job has ``id``, ``type``, ``status`` and, as they apply, ``progress``,
    ``message``, ``result`` and ``error``. Subclasses may override
    :meth:`groups_for` to subscribe to more groups the user may see.
    """

    def groups_for(self, user: Any) -> list[str]:
        """The groups this connection joins; by default the user's own."""
        return [user_group(user)]

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not getattr(user, "is_authenticated", False):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.joined = self.groups_for(user)
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Browsers only listen; anything they send is ignored."""

    async def _forward(self, event: dict[str, Any]) -> None:
        await self.send_json({"event": event["type"].rsplit(".", 1)[-1], "job": event["job"]})

    layerq_job_started = _forward
    layerq_job_progress = _forward
    layerq_job_retrying = _forward
    layerq_job_succeeded = _forward
    layerq_job_failed = _forward
