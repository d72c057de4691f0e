"""Finding the consumer for each worker channel in the project's ASGI routing.

The routing is plain Channels: a ``ProtocolTypeRouter`` whose ``"channel"``
entry is a ``ChannelNameRouter`` mapping channel names to ``as_asgi()``
consumers. The worker needs the consumer classes themselves (it makes one
instance per job and calls handlers concurrently), so it reads them out of
the routers instead of running the consumers' own one-at-a-time loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from channels.routing import ChannelNameRouter, ProtocolTypeRouter

from .errors import ConfigurationError


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """The consumer class (and its ``as_asgi`` kwargs) serving one channel."""

    channel: str
    consumer_class: type[Any]
    initkwargs: dict[str, Any]

    def consumer(self) -> Any:
        """A fresh consumer instance."""
        return self.consumer_class(**self.initkwargs)


def resolve(application: Any, channels: Sequence[str]) -> dict[str, Route]:
    """The route of each of ``channels``; ConfigurationError naming what is missing."""
    router = application
    if isinstance(router, ProtocolTypeRouter):
        router = router.application_mapping.get("channel")
        if router is None:
            raise ConfigurationError(
                'the ASGI application\'s ProtocolTypeRouter has no "channel" entry; add'
                ' "channel": ChannelNameRouter({...}) mapping worker channels to consumers'
            )
    if not isinstance(router, ChannelNameRouter):
        raise ConfigurationError(
            f"runworker needs a ChannelNameRouter for worker channels, found {type(router)!r}"
        )
    routes = {}
    for channel in channels:
        app = router.application_mapping.get(channel)
        if app is None:
            known = ", ".join(sorted(router.application_mapping)) or "none"
            raise ConfigurationError(
                f"no consumer is routed for channel {channel!r} (routed: {known})"
            )
        cls = getattr(app, "consumer_class", None)
        if cls is None:
            raise ConfigurationError(
                f"channel {channel!r} must route to a consumer's as_asgi(), got {app!r}"
            )
        routes[channel] = Route(channel, cls, dict(getattr(app, "consumer_initkwargs", {})))
    return routes
