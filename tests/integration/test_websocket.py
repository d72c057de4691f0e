"""JobEventsConsumer: a user's websocket hears their own jobs and nobody else's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

import layerq
from tests.app.events import Steps
from tests.conftest import running_worker


def communicator_for(user: Any) -> WebsocketCommunicator:
    """A websocket to JobEventsConsumer as ``user``."""
    communicator = WebsocketCommunicator(layerq.JobEventsConsumer.as_asgi(), "/ws/jobs/")
    communicator.scope["user"] = user
    return communicator


async def test_user_sees_progress_then_success_of_own_job_only(layer: Any) -> None:
    """Alice's socket gets started, progress and succeeded for her job; Bob's gets nothing."""
    alice, bob = User(pk=41, username="alice"), User(pk=42, username="bob")
    alice_ws, bob_ws = communicator_for(alice), communicator_for(bob)
    assert (await alice_ws.connect())[0]
    assert (await bob_ws.connect())[0]
    job = await Steps(steps=2, pause=0.01).asend(notify=layerq.user_group(alice))
    async with running_worker(["slow"]):
        events = [await alice_ws.receive_json_from(timeout=5) for _ in range(4)]
    assert [e["event"] for e in events] == ["started", "progress", "progress", "succeeded"]
    assert {e["job"]["id"] for e in events} == {job.id}
    assert events[1]["job"]["progress"] == 0.5
    assert events[-1]["job"] | {"result": "done", "status": "succeeded"} == events[-1]["job"]
    assert await bob_ws.receive_nothing(timeout=0.3)
    await alice_ws.disconnect()
    await bob_ws.disconnect()


async def test_anonymous_socket_is_closed(layer: Any) -> None:
    """A connection without an authenticated user is refused with code 4401."""
    anonymous = communicator_for(AnonymousUser())
    connected, code = await anonymous.connect()
    assert not connected
    assert code == 4401


async def test_failure_is_forwarded_with_the_error(layer: Any) -> None:
    """A failed job reaches its owner's socket as a failed event with the error."""
    from tests.app.events import Fail

    carol = User(pk=43, username="carol")
    socket = communicator_for(carol)
    assert (await socket.connect())[0]
    await Fail(message="broken").asend(notify=layerq.user_group(carol), max_attempts=1)
    async with running_worker(["math"]):
        started = await socket.receive_json_from(timeout=5)
        failed = await socket.receive_json_from(timeout=5)
    assert started["event"] == "started"
    assert failed["event"] == "failed"
    assert failed["job"]["error"] == {"type": "ValueError", "message": "broken"}
    await socket.disconnect()


class TeamEventsConsumer(layerq.JobEventsConsumer):
    """Members of team 7 also hear the team's jobs."""

    channel_names: list[str] = []

    def groups_for(self, user: Any) -> list[str]:
        self.channel_names.append(self.channel_name)
        return [*super().groups_for(user), "team.7"]


async def test_groups_for_override_joins_and_leaves_the_extra_groups(layer: Any) -> None:
    """A subclass's groups_for decides what a socket hears: the team's jobs reach
    every member's socket, not a plain JobEventsConsumer's, and a closed socket
    leaves the groups it joined."""
    TeamEventsConsumer.channel_names.clear()
    dave, erin = User(pk=44, username="dave"), User(pk=45, username="erin")
    member = WebsocketCommunicator(TeamEventsConsumer.as_asgi(), "/ws/team/")
    member.scope["user"] = dave
    plain = communicator_for(erin)
    assert (await member.connect())[0]
    assert (await plain.connect())[0]
    job = await Steps(steps=1, pause=0.0).asend(notify="team.7")
    async with running_worker(["slow"]):
        events = [await member.receive_json_from(timeout=5) for _ in range(3)]
    assert [e["event"] for e in events] == ["started", "progress", "succeeded"]
    assert {e["job"]["id"] for e in events} == {job.id}
    assert await plain.receive_nothing(timeout=0.3)
    await member.disconnect()
    # Left: the team's next event reaches a new listener but not the closed socket.
    (closed,) = TeamEventsConsumer.channel_names
    listener = await layer.new_channel()
    await layer.group_add("team.7", listener)
    await layer.group_send("team.7", {"type": "layerq.job.started", "job": {}})
    assert (await layer.receive(listener))["type"] == "layerq.job.started"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(closed), 0.3)
    await plain.disconnect()
