"""The Django app: ``"layerq"`` in INSTALLED_APPS gives runworker and the JS client."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core import checks


class LayerqConfig(AppConfig):
    name = "layerq"
    verbose_name = "layerq"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        checks.register(check_app_order)
        checks.register(check_task_routes)


def check_app_order(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """layerq must precede channels: the first app that defines runworker wins."""
    names = [config.name for config in apps.get_app_configs()]
    if "channels" in names and names.index("channels") < names.index("layerq"):
        return [
            checks.Error(
                "'channels' comes before 'layerq' in INSTALLED_APPS, so `manage.py runworker`"
                " runs Channels' at-most-once worker instead of layerq's.",
                hint="Put 'layerq' before 'channels' in INSTALLED_APPS.",
                id="layerq.E001",
            )
        ]
    return []


def check_task_routes(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Each queue of a layerq backend in TASKS has its worker channel routed to a
    TaskWorker (else its tasks would wait for a worker that cannot run them)."""
    ours = {
        alias: params
        for alias, params in getattr(settings, "TASKS", {}).items()
        if str(params.get("BACKEND", "")).startswith("layerq.")
    }
    if not ours:
        return []
    from .tasks import route_problems  # imports django.tasks: only for its users

    return [problem for alias, params in ours.items() for problem in route_problems(alias, params)]
