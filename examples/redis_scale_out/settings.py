"""Settings every process loads: the producer (run.py) and each runworker."""

import os

SECRET_KEY = "example-only"
INSTALLED_APPS = ["layerq", "channels"]  # layerq first: its runworker replaces Channels' one
ASGI_APPLICATION = "workers.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "layerq.layers.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ["REDIS_URL"]]},
    }
}
#: the example's handler appends one line per run here, to show that none ran twice
EXAMPLE_RUNS_FILE = os.environ.get("EXAMPLE_RUNS_FILE", os.devnull)
