"""The Django app: ``"layerq"`` in INSTALLED_APPS gives runworker and the JS client."""

from __future__ import annotations

from django.apps import AppConfig


class LayerqConfig(AppConfig):
    name = "layerq"
    verbose_name = "layerq"
    default_auto_field = "django.db.models.AutoField"
