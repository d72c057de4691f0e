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


def fixed_record_pairs(message: Mapping[str, Any], channel: str) -> list[str]:
    """A job's record fields that never change, as HSET pairs, from its stored
    message (as decoded, before anything reads or changes it); [] for a message
    that is not a job's.

    While a job is stored, these are read from its payload (see
    :func:`decode_record`); once it ends its payload is gone, so the settle
    or cancel that ends it writes them into the record. ``channel`` is where
    the message is stored; a message for a process-local channel names its
    own.
    """
    job_id = job_id_of(message)
    if job_id is None:
        return []
    target = message.get(LOCAL_CHANNEL_KEY)
    pairs = ["id", job_id, "channel", target if isinstance(target, str) else channel]
    kind = message.get("type")
    if isinstance(kind, str):
        pairs += ["type", kind]
    envelope = message[ENVELOPE_KEY]
    enqueued = envelope.get("enqueued")
    if isinstance(enqueued, int | float) and not isinstance(enqueued, bool):
        pairs += ["enqueued_at", number(enqueued)]
    attempts = envelope.get("max_attempts")
    if isinstance(attempts, int) and not isinstance(attempts, bool):
        pairs += ["max_attempts", str(attempts)]
    return pairs


def packed_record_pairs(payload: bytes, channel: str) -> bytes:
    """:func:`payload_record_pairs` as one msgpack array, as the scripts take them."""
    return _encoder.encode(payload_record_pairs(payload, channel))


def payload_record_pairs(payload: bytes | None, channel: str) -> list[str]:
    """:func:`fixed_record_pairs` of a stored payload; [] when there is none to read."""
    if payload is None:
        return []
    try:
        return fixed_record_pairs(decode_message(payload), channel)
    except ValueError:
        return []


def decode_record(raw: Mapping[Any, Any], payload: bytes | None, channel: str) -> JobRecord | None:
    """The JobRecord of a job, from its record hash and its stored ``payload``.

    A job that has not ended has no record hash (it waits) or one that holds
    only what changed (status, attempt, times, progress, the watch mark); the
    rest (id, type, channel, enqueue time, max attempts) is read from its
    payload, ``channel`` being where it is stored. An ended job's hash holds
    everything, those five packed in its field ``fixed``. None for no such job.
    """
    fields: dict[str, str] = {}
    result: Any = _NO_RESULT
    packed: bytes | None = None
    for key, value in raw.items():
        name = text(key)
        if name == "result":
            result = value
        elif name == "fixed":
            packed = value  # an ended job's fixed fields, packed (see redis_settle.lua)
        else:
            fields[name] = text(value)
    if "id" not in fields:
        fixed = payload_record_pairs(payload, channel) if packed is None else decode_value(packed)
        for name, value in zip(fixed[::2], fixed[1::2], strict=True):
            fields.setdefault(name, value)  # the hash, where it has one, is newer
        if fixed:
            fields.setdefault("status", "queued")
    # Redis expires the hash on its own clock; this honours layerq's too. An
    # ended job's hash holds its TTL (ms) after finished_at (records written
    # before it did hold expires_at).
    legacy = fields.pop("expires_at", None)
    ttl = fields.pop("ttl", None)
    expires = None if legacy is None else float(legacy)
    if ttl is not None and "finished_at" in fields:
        expires = float(fields["finished_at"]) + int(ttl) / 1000
    if expires is not None and expires <= clock.now():
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
    # Taken now, before a handler could change the message it is given; one
    # msgpack argument of the settle that ends the job, not ten.
    record = _encoder.encode(fixed_record_pairs(message, channel))
    target = message.pop(LOCAL_CHANNEL_KEY, channel)
    return Delivery(
        id=text(raw_id),
        channel=target if isinstance(target, str) else channel,
        message=message,
        attempt=int(attempt),
        token=str(token),
        reclaimed=bool(reclaimed),
        job_id=job_id_of(message),
        record=record,
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
