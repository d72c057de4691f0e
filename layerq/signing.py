"""Envelope signatures: an HMAC over the canonical JSON of a message.

A worker refuses (dead-letters) messages whose signature does not match, so a
process that can write to the channel layer but does not hold the key cannot
make workers run arbitrary events.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Any

import msgspec
from django.conf import settings as django_settings

from .conf import get_settings

_json = msgspec.json.Encoder(order="sorted")


@functools.cache
def signing_key() -> bytes:
    """The HMAC key: ``LAYERQ['signing_key']`` or one derived from SECRET_KEY."""
    configured = get_settings().signing_key
    secret = configured if configured is not None else django_settings.SECRET_KEY
    return hashlib.sha256(b"layerq.signing:" + str(secret).encode()).digest()


@functools.lru_cache(maxsize=4)
def _pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the HMAC inner and outer key pads (RFC 2104).

    HMAC-SHA256 is then a copy and an update of each: hmac.digest fetches the
    algorithm from OpenSSL on every call, which costs more than the hashing.
    """
    block = hashlib.sha256().block_size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def _hmac_sha256(data: bytes) -> bytes:
    inner, outer = _pads(signing_key())
    inner, outer = inner.copy(), outer.copy()
    inner.update(data)
    outer.update(inner.digest())
    return outer.digest()  # type: ignore[no-any-return]


def _digest(message: dict[str, Any]) -> str:
    return _hmac_sha256(_json.encode(message))[:16].hex()


def sign(message: dict[str, Any]) -> str:
    """Signature of ``message`` (the envelope's ``sig`` is left out of it)."""
    envelope = message.get("layerq")
    if not isinstance(envelope, dict) or "sig" not in envelope:
        return _digest(message)
    # The signature is taken out for the encoding and put back, rather than both
    # dicts copied (a worker checks every job). Keys are encoded sorted, so the
    # signature coming back last changes nothing.
    signature = envelope.pop("sig")
    try:
        return _digest(message)
    finally:
        envelope["sig"] = signature


def verify(message: dict[str, Any], signature: object) -> bool:
    """True when ``signature`` is the signature of ``message``."""
    return isinstance(signature, str) and hmac.compare_digest(sign(message), signature)
