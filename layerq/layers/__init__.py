"""Channel layers that are queues, and the helpers to reach the configured one.

``CHANNEL_LAYERS`` names them by dotted path, as Channels expects::

    "BACKEND": "layerq.layers.SQLiteChannelLayer"   # embedded, one machine
    "BACKEND": "layerq.layers.RedisChannelLayer"    # one or more Redis servers
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from channels.layers import get_channel_layer

from ..conf import get_settings
from ..errors import ConfigurationError, Unsupported
from .base import DeadLetter, Delivery, QueueLayer, is_queue_layer

if TYPE_CHECKING:
    from .redis import RedisChannelLayer
    from .sqlite import SQLiteChannelLayer

__all__ = [
    "DeadLetter",
    "Delivery",
    "QueueLayer",
    "RedisChannelLayer",
    "SQLiteChannelLayer",
    "get_layer",
    "is_queue_layer",
    "require_queue_layer",
]


def __getattr__(name: str) -> Any:
    # Backends load on first use so importing layerq needs neither sqlite3 nor redis.
    if name == "SQLiteChannelLayer":
        from .sqlite import SQLiteChannelLayer

        return SQLiteChannelLayer
    if name == "RedisChannelLayer":
        from .redis import RedisChannelLayer

        return RedisChannelLayer
    raise AttributeError(name)


def get_layer(alias: str | None = None) -> Any:
    """The channel layer for ``alias`` (default: ``LAYERQ['layer']``)."""
    alias = alias or get_settings().layer
    layer = get_channel_layer(alias)
    if layer is None:
        raise ConfigurationError(f"CHANNEL_LAYERS has no {alias!r} layer; layerq needs one")
    return layer


def require_queue_layer(alias: str | None, what: str) -> QueueLayer:
    """The layer for ``alias``, or Unsupported naming ``what`` basic mode lacks."""
    layer = get_layer(alias)
    if not is_queue_layer(layer):
        raise Unsupported(
            f"{what} need a layerq channel layer; {type(layer).__name__} runs in basic mode"
        )
    return layer  # type: ignore[no-any-return]
