"""How the Redis layer turns messages and job records into bytes (msgpack, never pickle)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import msgspec

from .. import clock
from ..events import ENVELOPE_KEY, check_plain
from ..jobs import JobRecord
from .base import DeadLetter, Delivery

#: where a message for a process-local channel carries its full channel name
LOCAL_CHANNEL_KEY = "__asgi_channel__"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_dict_decoder = msgspec.msgpack.Decoder(dict[str, Any])

_NO_RESULT = object()
_RECORD_FIELDS = JobRecord.__struct_fields__


def job_id_of(message: Mapping[str, Any]) -> str | None:
    """The job id when ``message`` is a job message (a ``layerq`` envelope with an id)."""
    envelope = message.get(ENVELOPE_KEY)
    if isinstance(envelope, dict):
        job_id = envelope.get("id")
        if isinstance(job_id, str) and job_id:
            return job_id
    return None


def new_message_id() -> str:
    """An id for a plain message; the leading dot keeps it apart from job ids."""
    return "." + secrets.token_hex(8)


def encode_message(message: dict[str, Any], checked: bool = False) -> bytes:
    """msgpack bytes of a Channels message, refusing what would not round-trip.

    TypeError for a non-dict (as Channels layers do); InvalidEvent for values
    that msgpack cannot carry or that a receiver would read differently.
    ``checked``: the values were already checked (a producer-built job message).
    """
    if not isinstance(message, dict):
        raise TypeError(f"a message must be a dict, not {type(message).__name__}")
    if not checked:
        check_plain(message, "$")
    return _encoder.encode(message)


def decode_message(payload: bytes) -> dict[str, Any]:
    """The message stored as ``payload``."""
    return _dict_decoder.decode(payload)


def encode_value(value: Any) -> bytes:
    """msgpack bytes of a job result or dead-letter info."""
    return _encoder.encode(value)


def decode_value(payload: bytes) -> Any:
    return _decoder.decode(payload)


def text(value: bytes | str) -> str:
    """A Redis reply as str (clients here do not decode replies)."""
    return value.decode() if isinstance(value, bytes) else value


def number(value: float) -> str:
    """A float as Lua and Redis read it back exactly."""
    return repr(float(value))


def milliseconds(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (0 would mean no TTL at all)."""
    return max(1, int(seconds * 1000))


def pairs(raw: list[Any]) -> dict[Any, Any]:
    """HGETALL's flat reply as a dict."""
    return dict(zip(raw[::2], raw[1::2], strict=True))


def record_pairs(record: JobRecord) -> list[str | bytes]:
    """The field/value pairs for HSET, as Redis stores them; None fields are left out."""
    if (
        record.started_at is None
        and record.finished_at is None
        and record.progress is None
        and record.progress_message is None
        and record.result is None
        and record.error_type is None
        and record.error_message is None
    ):
        # A record as a send writes it (queued): written out, at half the cost.
        pairs: list[str | bytes] = [
            "id", record.id, "type", record.type, "channel", record.channel,
            "status", str(record.status), "attempt", str(int(record.attempt)),
        ]  # fmt: skip
        if record.max_attempts is not None:
            pairs += ["max_attempts", str(int(record.max_attempts))]
        if record.enqueued_at is not None:
            pairs += ["enqueued_at", number(record.enqueued_at)]
        return pairs
    pairs = []
    for field, value in zip(_RECORD_FIELDS, msgspec.structs.astuple(record), strict=True):
        if value is None:
            continue
        if field == "result":
            pairs += [field, encode_value(value)]
        elif isinstance(value, str):  # a JobStatus too: its value
            pairs += [field, str(value)]
        elif isinstance(value, float):
            pairs += [field, number(value)]
        else:
            pairs += [field, str(int(value))]
    return pairs


def decode_record(raw: Mapping[Any, Any]) -> JobRecord | None:
    """The JobRecord stored as hash fields; None for an empty (missing) hash."""
    if not raw:
        return None
    fields: dict[str, str] = {}
    result: Any = _NO_RESULT
    for key, value in raw.items():
        name = text(key)
        if name == "result":
            result = value
        else:
            fields[name] = text(value)
    expires = fields.pop("expires_at", None)
    # Redis expires the hash on its own clock; this honours layerq's too.
    if expires is not None and float(expires) <= clock.now():
        return None
    if "id" not in fields or "status" not in fields:
        return None  # a half-written hash (e.g. progress on an expired record)
    fields.setdefault("type", "")
    fields.setdefault("channel", "")
    # Not strict: numbers and the status are read from their strings; fields
    # that are not the record's (the watch mark) are left out.
    record = msgspec.convert(fields, type=JobRecord, strict=False)
    if result is not _NO_RESULT:
        record.result = decode_value(result)
    return record


def delivery(channel: str, row: list[Any]) -> Delivery:
    """The Delivery for one row of redis_claim.lua: (id, payload, attempt, token, reclaimed)."""
    raw_id, payload, attempt, token, reclaimed = row
    try:
        message = decode_message(payload)
    except ValueError:
        message = {}  # undecodable: the worker dead-letters it; the bytes stay stored
    target = message.pop(LOCAL_CHANNEL_KEY, channel)
    return Delivery(
        id=text(raw_id),
        channel=target if isinstance(target, str) else channel,
        message=message,
        attempt=int(attempt),
        token=str(token),
        reclaimed=bool(reclaimed),
        job_id=job_id_of(message),
    )


def dead_letter(
    channel: str, raw_id: bytes, payload: bytes | None, info: bytes | None
) -> DeadLetter:
    """A DeadLetter from its stored payload and msgpack [reason, failed_at, job_id]."""
    reason, failed_at, job_id = decode_value(info) if info else ("", 0.0, None)
    message: dict[str, Any] | None = None
    if payload:
        try:
            message = decode_message(payload)
            message.pop(LOCAL_CHANNEL_KEY, None)
        except ValueError:
            message = None
    return DeadLetter(text(raw_id), channel, message, reason, failed_at, job_id)
