"""The Channels layer specification, as every layerq layer must meet it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import layerq
from layerq import clock


async def test_send_then_receive_round_trips_every_msgpack_type(layer: Any) -> None:
    """A message of every msgpack-able type comes back equal."""
    message = {
        "type": "test.message",
        "text": "héllo",
        "int": -(2**40),
        "float": 1.5,
        "bool": True,
        "none": None,
        "bytes": b"\x00\xff",
        "list": [1, "two", [3.0]],
        "map": {"nested": {"deep": [True]}},
    }
    await layer.send("spec-roundtrip", message)
    assert await asyncio.wait_for(layer.receive("spec-roundtrip"), 5) == message


@pytest.mark.parametrize("name", ["", "a" * 100, "has space", "bad/slash", 42])
async def test_invalid_channel_names_are_refused(layer: Any, name: Any) -> None:
    """Names that break the spec's grammar or length raise TypeError."""
    with pytest.raises(TypeError):
        await layer.send(name, {"type": "x"})


async def test_invalid_group_names_are_refused(layer: Any) -> None:
    """Group names with a '!' (or other illegal characters) raise TypeError."""
    with pytest.raises(TypeError):
        await layer.group_add("bad!group", "chan")


async def test_send_at_capacity_raises_channel_full(layer: Any) -> None:
    """A send past the channel's capacity raises QueueFull, a ChannelFull."""
    from channels.exceptions import ChannelFull

    layer.capacity = 3
    for index in range(3):
        await layer.send("spec-full", {"type": "x", "n": index})
    with pytest.raises(ChannelFull) as raised:
        await layer.send("spec-full", {"type": "x", "n": 3})
    assert isinstance(raised.value, layerq.QueueFull)


async def test_channel_capacity_patterns_override_the_default(layer: Any) -> None:
    """A glob in channel_capacity sets the capacity of the channels it matches."""
    layer.channel_capacity = layer.compile_capacities({"tiny-*": 1})
    await layer.send("tiny-one", {"type": "x"})
    with pytest.raises(layerq.QueueFull):
        await layer.send("tiny-one", {"type": "x"})
    await layer.send("other", {"type": "x"})


async def test_capacity_and_expiry_come_from_the_layer_config(layer_settings: Any) -> None:
    """capacity, channel_capacity and expiry given in CONFIG (as Channels passes them)
    are what the layer holds sends to."""
    from django.utils.module_loading import import_string

    alias = layer_settings["default"]
    options = {"capacity": 2, "channel_capacity": {"tiny-*": 1}, "expiry": 5}
    configured = import_string(alias["BACKEND"])(**alias["CONFIG"], **options)
    now = clock.now()
    try:
        await configured.send("tiny-one", {"type": "x"})
        with pytest.raises(layerq.QueueFull):
            await configured.send("tiny-one", {"type": "x"})
        await configured.send("spec-config", {"type": "old"})
        await configured.send("spec-config", {"type": "old"})
        with pytest.raises(layerq.QueueFull):
            await configured.send("spec-config", {"type": "x"})
        clock.set_clock(lambda: now + 10)  # both "old" messages are past their expiry
        await configured.send("spec-config", {"type": "fresh"})
        received = await asyncio.wait_for(configured.receive("spec-config"), 5)
        assert received["type"] == "fresh"
    finally:
        clock.set_clock(None)
        await configured.flush()
        close = getattr(configured, "close", None)
        if close is not None:
            await close()


async def test_plain_messages_expire(layer: Any) -> None:
    """A plain message older than `expiry` is not delivered."""
    now = clock.now()
    layer.expiry = 5
    await layer.send("spec-expiry", {"type": "old"})
    clock.set_clock(lambda: now + 10)
    try:
        await layer.send("spec-expiry", {"type": "fresh"})
        assert (await asyncio.wait_for(layer.receive("spec-expiry"), 5))["type"] == "fresh"
    finally:
        clock.set_clock(None)


async def test_process_specific_channels_receive_their_own_messages(layer: Any) -> None:
    """new_channel() names are unique and receive what is sent to them."""
    first, second = await layer.new_channel(), await layer.new_channel()
    assert first != second
    assert "!" in first
    await layer.send(second, {"type": "for.second"})
    await layer.send(first, {"type": "for.first"})
    assert (await asyncio.wait_for(layer.receive(first), 5))["type"] == "for.first"
    assert (await asyncio.wait_for(layer.receive(second), 5))["type"] == "for.second"


async def test_group_send_reaches_members_only(layer: Any) -> None:
    """group_send reaches added channels and not discarded ones."""
    a, b, c = [await layer.new_channel() for _ in range(3)]
    await layer.group_add("spec-group", a)
    await layer.group_add("spec-group", b)
    await layer.group_add("spec-group", c)
    await layer.group_discard("spec-group", c)
    await layer.group_send("spec-group", {"type": "hello"})
    assert (await asyncio.wait_for(layer.receive(a), 5))["type"] == "hello"
    assert (await asyncio.wait_for(layer.receive(b), 5))["type"] == "hello"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(c), 0.3)


async def test_group_send_skips_full_members_without_raising(layer: Any) -> None:
    """A member at capacity misses the message; group_send does not raise."""
    layer.capacity = 1
    full, free = await layer.new_channel(), await layer.new_channel()
    await layer.send(full, {"type": "filler"})
    await layer.group_add("spec-full-group", full)
    await layer.group_add("spec-full-group", free)
    await layer.group_send("spec-full-group", {"type": "news"})
    assert (await asyncio.wait_for(layer.receive(free), 5))["type"] == "news"
    assert (await asyncio.wait_for(layer.receive(full), 5))["type"] == "filler"


async def test_flush_empties_channels_and_groups(layer: Any) -> None:
    """After flush() nothing sent before it is received."""
    channel = await layer.new_channel()
    await layer.group_add("spec-flush", channel)
    await layer.send("spec-flushed", {"type": "gone"})
    await layer.flush()
    await layer.group_send("spec-flush", {"type": "after"})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive("spec-flushed"), 0.3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.3)


async def test_cancelled_receive_does_not_lose_the_next_message(layer: Any) -> None:
    """Cancelling receive() many times never swallows a message sent meanwhile."""
    for index in range(20):
        task = asyncio.create_task(layer.receive("spec-cancel"))
        await asyncio.sleep(0.001 * (index % 4))
        await layer.send("spec-cancel", {"type": "x", "n": index})
        task.cancel()
        try:
            got = await task
        except asyncio.CancelledError:
            got = await asyncio.wait_for(layer.receive("spec-cancel"), 5)
        assert got["n"] == index


async def test_concurrent_receivers_get_distinct_messages(layer: Any) -> None:
    """Ten receivers on one channel share 50 messages with no duplicates."""
    received: list[int] = []

    async def drain() -> None:
        while True:
            received.append((await layer.receive("spec-many"))["n"])

    receivers = [asyncio.create_task(drain()) for _ in range(10)]
    for index in range(50):
        await layer.send("spec-many", {"type": "x", "n": index})
    for _ in range(500):
        if len(received) >= 50:
            break
        await asyncio.sleep(0.01)
    for task in receivers:
        task.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
    assert sorted(received) == list(range(50))


async def test_layer_advertises_its_extensions(layer: Any) -> None:
    """Groups, flush and the layerq extension are advertised."""
    assert {"groups", "flush", "layerq"} <= set(layer.extensions)
    assert isinstance(layer.group_expiry, int)


async def test_integer_map_keys_are_refused_at_send(layer: Any) -> None:
    """A map with a non-string key fails at send, not after it left the queue."""
    with pytest.raises(layerq.InvalidEvent):
        await layer.send("spec-keys", {"type": "t", "map": {1: "one"}})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive("spec-keys"), 0.2)


async def test_each_process_channel_has_its_own_capacity(layer: Any) -> None:
    """One full '!' channel does not make the process's other channels full."""
    layer.capacity = 1
    full, free = await layer.new_channel(), await layer.new_channel()
    await layer.send(full, {"type": "t"})
    with pytest.raises(layerq.QueueFull):
        await layer.send(full, {"type": "t"})
    await layer.send(free, {"type": "t"})


async def test_group_membership_expires(layer: Any) -> None:
    """A member added longer than group_expiry ago gets nothing."""
    layer.group_expiry = 100
    start = clock.now()
    channel = await layer.new_channel()
    await layer.group_add("spec-old", channel)
    clock.set_clock(lambda: start + 101)
    try:
        await layer.group_send("spec-old", {"type": "news"})
    finally:
        clock.set_clock(None)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), 0.3)


async def test_cancelled_receive_on_a_process_channel_loses_nothing(layer: Any) -> None:
    """Cancelling receive() on a '!' channel never swallows a message."""
    channel = await layer.new_channel()
    for index in range(10):
        waiting = asyncio.create_task(layer.receive(channel))
        await asyncio.sleep(0.001 * (index % 3))
        await layer.send(channel, {"type": "t", "n": index})
        waiting.cancel()
        try:
            got = await waiting
        except asyncio.CancelledError:
            got = await asyncio.wait_for(layer.receive(channel), 5)
        assert got["n"] == index
