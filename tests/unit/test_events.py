"""Typed events: declaration, validation and the wire format."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import layerq
from layerq.events import ENVELOPE_KEY, Envelope, build_message, check_plain, read_envelope
from tests.app.events import Add


def test_event_class_keywords_set_type_and_channel() -> None:
    """type= and channel= become the class's event_type and event_channel."""
    assert (Add.event_type, Add.event_channel) == ("math.add", "math")


def test_fields_validate_and_serialise() -> None:
    """fields() returns plain builtins after validating the values."""
    assert Add(a=1, b=2).fields() == {"a": 1, "b": 2}
    with pytest.raises(layerq.InvalidEvent, match=r"Expected `int`, got `str` - at `\$\.a`"):
        Add(a="1", b=2).fields()  # type: ignore[arg-type]


def test_reserved_field_names_are_refused() -> None:
    """An Event may not declare 'type' or 'layerq' fields."""
    with pytest.raises(TypeError, match="reserved"):

        class Bad(layerq.Event, type="tests.bad"):
            layerq: int


def test_event_type_must_be_a_dotted_name() -> None:
    """A type with a leading underscore or spaces is refused at class creation."""
    with pytest.raises(TypeError, match="invalid event type"):

        class Bad(layerq.Event, type="_private"):
            pass


def test_two_classes_cannot_share_a_type() -> None:
    """Registering a second class for an existing type is an error."""
    with pytest.raises(TypeError, match="already used"):

        class Again(layerq.Event, type="math.add"):
            pass


def test_message_is_flat_with_one_envelope_key() -> None:
    """The message is `type`, the fields, and the envelope under 'layerq'."""
    message = build_message("math.add", {"a": 1, "b": 2}, Envelope(id="j", enqueued=1.0))
    assert message == {
        "type": "math.add",
        "a": 1,
        "b": 2,
        ENVELOPE_KEY: {"id": "j", "enqueued": 1.0},
    }
    assert read_envelope(message).id == "j"
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(message)) == message


@pytest.mark.parametrize(
    "value",
    [{1: "x"}, [{"ok": {2: "y"}}], {"set": {1, 2}}, object()],
)
def test_values_msgpack_would_not_round_trip_are_refused(value: object) -> None:
    """Integer map keys, sets and arbitrary objects cannot be sent."""
    with pytest.raises(layerq.InvalidEvent):
        check_plain(value, "$")


def test_missing_or_broken_envelope_is_invalid() -> None:
    """read_envelope() refuses messages without a well-formed envelope."""
    with pytest.raises(layerq.InvalidEvent, match="no layerq envelope"):
        read_envelope({"type": "x"})
    with pytest.raises(layerq.InvalidEvent, match="malformed"):
        read_envelope({"type": "x", "layerq": {"id": 3}})


def test_fields_of_open_types_are_still_checked_for_msgpack() -> None:
    """A field typed loosely (dict[Any, Any], Any) is checked like a dict event:
    an integer map key is refused at send, not at receive. Events whose fields
    are all scalars skip that walk; their values cannot hold such keys."""

    class Loose(layerq.Event, type="tests.open_fields"):
        data: dict[Any, Any]
        anything: Any = None

    class Scalars(layerq.Event, type="tests.scalar_fields"):
        s: str
        n: int | None = None
        f: float = 0.0
        raw: bytes = b""

    with pytest.raises(layerq.InvalidEvent, match="not a string"):
        Loose(data={1: "int key"}).fields()
    with pytest.raises(layerq.InvalidEvent, match="not a string"):
        Loose(data={}, anything={2: "x"}).fields()
    assert Loose(data={"a": [1, {"b": 2}]}).fields() == {
        "data": {"a": [1, {"b": 2}]},
        "anything": None,
    }
    assert Scalars(s="x", n=None).fields() == {"s": "x", "n": None, "f": 0.0, "raw": ""}
