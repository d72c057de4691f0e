"""Django settings for the test suite; process tests read the layer from the environment."""

import os
import tempfile
from pathlib import Path

SECRET_KEY = "layerq-tests-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "layerq",  # before channels: its runworker replaces Channels' one
    "channels",
    "tests.app",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("LAYERQ_TEST_DJANGO_DB", ":memory:"),
    }
}
ASGI_APPLICATION = "tests.app.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

_layer_db = os.environ.get("LAYERQ_TEST_LAYER_DB") or str(
    Path(tempfile.gettempdir()) / f"layerq-tests-{os.getpid()}.sqlite3"
)
if os.environ.get("LAYERQ_TEST_REDIS_URL"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layerq.layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [os.environ["LAYERQ_TEST_REDIS_URL"]],
                "prefix": os.environ.get("LAYERQ_TEST_REDIS_PREFIX", "asgi"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "layerq.layers.SQLiteChannelLayer", "CONFIG": {"path": _layer_db}}
    }
TASKS = {
    "default": {
        "BACKEND": "layerq.tasks.LayerqBackend",
        "QUEUES": ["default", "other"],
    }
}
LAYERQ = {
    "lease": float(os.environ.get("LAYERQ_TEST_LEASE", "30")),
    "backoff": 0.05,
    "backoff_max": 0.2,
}
