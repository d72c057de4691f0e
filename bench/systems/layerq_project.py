"""Django settings of the layerq benchmark project; the layer comes from ``$BENCH_CONFIG``.

Variants: ``sqlite`` (a file in the run directory), ``redis`` (the run's
private Redis) and ``inmemory`` (Channels' InMemoryChannelLayer: basic mode,
producer and worker in one process).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_config = json.loads(os.environ["BENCH_CONFIG"])
_variant = _config["variant"]

SECRET_KEY = "layerq-bench-only"
DEBUG = False
USE_TZ = True
# layerq before channels: the first app wins a management command name, and both
# ship `runworker`.
INSTALLED_APPS = ["layerq", "channels"]
DATABASES: dict[str, Any] = {}
ASGI_APPLICATION = "bench.systems.layerq_app.application"

if _variant == "sqlite":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layerq.layers.SQLiteChannelLayer",
            "CONFIG": {"path": str(Path(_config["directory"]) / "layerq.sqlite3")},
        }
    }
elif _variant in ("redis", "redis-prefetch"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layerq.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [_config["redis_url"]]},
        }
    }
elif _variant == "inmemory":
    # The default capacity of 100 would refuse the drain backlog with QueueFull.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": _config["jobs"] + _config["latency_jobs"] + 1000},
        }
    }
else:
    raise ValueError(f"unknown layerq variant {_variant!r}")

LAYERQ: dict[str, Any] = {}  # the defaults users get: signed envelopes, 30 s leases
