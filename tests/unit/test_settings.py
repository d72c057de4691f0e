"""LAYERQ settings, signatures, backoff and routing errors."""

from __future__ import annotations

import copy
import hmac

import msgspec
import pytest
from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import layerq
from layerq import signing
from layerq.conf import Settings, get_settings
from layerq.routing import resolve
from layerq.runtime import backoff
from tests.app.consumers import MathWorker


def test_settings_default_and_override() -> None:
    """Defaults apply; LAYERQ overrides them; the cache resets on change."""
    with override_settings(LAYERQ={}):
        assert get_settings().max_attempts == 3
    with override_settings(LAYERQ={"max_attempts": 7}):
        assert get_settings().max_attempts == 7


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"max_atempts": 3}, "unknown LAYERQ"),
        ({"max_attempts": 0}, "at least 1"),
        ({"lease": -1}, "positive"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_settings_raise_improperly_configured(raw: dict[str, object], match: str) -> None:
    """Typos and out-of-range values name the setting, as ImproperlyConfigured."""
    with pytest.raises(ImproperlyConfigured, match=match):
        Settings.from_mapping(raw)


def test_signature_covers_fields_and_envelope() -> None:
    """Changing any field or envelope value breaks the signature."""
    message = {"type": "t", "a": 1, "layerq": {"id": "j", "enqueued": 1.0}}
    signature = signing.sign(message)
    assert signing.verify(message, signature)
    assert not signing.verify({**message, "a": 2}, signature)
    assert not signing.verify({**message, "layerq": {"id": "k", "enqueued": 1.0}}, signature)
    assert not signing.verify(message, None)


def test_verify_of_an_envelopes_own_signature_leaves_the_message_as_it_was() -> None:
    """A worker checks the signature its envelope carries: right or wrong, the
    message keeps every key and value, the signature included."""
    message = {"type": "t", "a": 1, "layerq": {"id": "j", "enqueued": 1.0}}
    message["layerq"]["sig"] = signing.sign(message)
    before = copy.deepcopy(message)
    assert signing.verify(message, message["layerq"]["sig"])
    assert message == before
    message["a"] = 2
    assert not signing.verify(message, message["layerq"]["sig"])
    assert message["layerq"] == before["layerq"]


def test_signature_is_hmac_sha256_of_the_canonical_json() -> None:
    """The signature is the standard HMAC-SHA256 of the message (hex, truncated), for any key."""
    message = {"type": "t", "b": [1, "x"], "a": {"z": 1}, "layerq": {"id": "j", "enqueued": 1.0}}
    canonical = msgspec.json.Encoder(order="sorted").encode(message)
    for secret in ("short", "k" * 200):
        with override_settings(LAYERQ={"signing_key": secret}):
            expected = hmac.digest(signing.signing_key(), canonical, "sha256")[:16].hex()
            assert signing.sign(message) == expected


def test_signing_key_follows_secret_key() -> None:
    """A different SECRET_KEY gives a different signature."""
    message = {"type": "t", "layerq": {"id": "j", "enqueued": 1.0}}
    before = signing.sign(message)
    with override_settings(SECRET_KEY="another"):
        assert signing.sign(message) != before
    assert signing.sign(message) == before


def test_backoff_grows_and_is_capped() -> None:
    """Retry delays double per attempt within jitter and never pass backoff_max."""
    settings = Settings(backoff=1.0, backoff_max=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [backoff(attempt, settings) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)


def test_routing_errors_name_what_is_missing() -> None:
    """An unrouted channel or a router without 'channel' is a clear configuration error."""
    app = ProtocolTypeRouter({"channel": ChannelNameRouter({"math": MathWorker.as_asgi()})})
    assert resolve(app, ["math"])["math"].consumer_class is MathWorker
    with pytest.raises(layerq.ConfigurationError, match="no consumer is routed for channel 'nope'"):
        resolve(app, ["nope"])
    with pytest.raises(layerq.ConfigurationError, match='no "channel" entry'):
        resolve(ProtocolTypeRouter({}), ["math"])


def test_user_group_is_a_valid_group_name() -> None:
    """user_group() accepts users or pks and always yields a legal group name."""
    from channels.layers import BaseChannelLayer

    names = BaseChannelLayer()
    for pk in (42, "0b9c-uuid", "user@example.com", "x" * 200):
        assert names.require_valid_group_name(layerq.user_group(pk))
    assert layerq.user_group(42) == "layerq.user.42"
    with pytest.raises(ValueError, match="saved"):
        layerq.user_group(None)


def test_app_order_check_flags_channels_before_layerq() -> None:
    """The layerq.E001 check fires when 'channels' precedes 'layerq'."""
    from layerq.apps import check_app_order

    assert check_app_order() == []
    with override_settings(INSTALLED_APPS=["django.contrib.contenttypes", "channels", "layerq"]):
        [error] = check_app_order()
    assert error.id == "layerq.E001"
