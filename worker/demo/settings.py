"""Settings of the reference deployment.

Zero setup by default: Django and the channel layer each live in a SQLite file
next to ``manage.py``. With ``REDIS_URL`` set, the layer is Redis instead.
Environment: ``REDIS_URL``, ``LAYERQ_DEMO_LAYER_DB`` (the SQLite layer file),
``DJANGO_DB`` (the Django database file), ``DJANGO_SECRET_KEY``,
``DJANGO_DEBUG=1``, ``DJANGO_ALLOWED_HOSTS`` (comma separated).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# The demo's key signs sessions and (through layerq's signing) job envelopes;
# set DJANGO_SECRET_KEY anywhere but a laptop.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "layerq-demo-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    # layerq before channels: both ship a runworker command and the first app wins.
    "layerq",
    "channels",
    "demo",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "demo.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
ASGI_APPLICATION = "demo.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB") or BASE_DIR / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

if os.environ.get("REDIS_URL"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layerq.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [os.environ["REDIS_URL"]]},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layerq.layers.SQLiteChannelLayer",
            "CONFIG": {
                "path": os.environ.get("LAYERQ_DEMO_LAYER_DB") or BASE_DIR / "layerq.sqlite3"
            },
        }
    }
# The defaults suit the demo; a failing job's single retry comes after about a second.
LAYERQ: dict[str, object] = {}
