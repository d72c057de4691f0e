"""The ``LAYERQ`` setting, parsed once into a frozen dataclass.

Parsing happens on first use, not at import, and the cache is dropped when
Django's ``setting_changed`` fires, so ``override_settings`` works in tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .errors import ConfigurationError


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Queue defaults; every field can be set in ``settings.LAYERQ``."""

    layer: str = "default"  #: the CHANNEL_LAYERS alias producers and workers use
    max_attempts: int = 3  #: deliveries before a failing job is dead-lettered
    backoff: float = 1.0  #: first retry delay in seconds; doubles each attempt
    backoff_max: float = 300.0  #: upper bound of one retry delay
    timeout: float | None = 300.0  #: per-job run time limit in seconds (None: no limit)
    lease: float = 30.0  #: seconds a delivery stays invisible before another worker may take it
    result_ttl: float = 86400.0  #: seconds a finished job's record is kept
    sign: bool = True  #: sign envelopes and refuse unsigned messages in workers
    signing_key: str | None = None  #: defaults to a key derived from SECRET_KEY

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("LAYERQ['max_attempts'] must be at least 1")
        for name in ("backoff", "backoff_max", "lease", "result_ttl"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"LAYERQ[{name!r}] must be a positive number")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError("LAYERQ['timeout'] must be positive or None")

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> Settings:
        """Build from a ``LAYERQ`` dict, refusing unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigurationError(f"unknown LAYERQ setting(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigurationError(f"invalid LAYERQ setting: {exc}") from exc


@functools.cache
def get_settings() -> Settings:
    """Return the parsed ``LAYERQ`` setting (cached until settings change)."""
    raw = getattr(django_settings, "LAYERQ", None) or {}
    if not isinstance(raw, dict):
        raise ConfigurationError("LAYERQ must be a dict")
    return Settings.from_mapping(raw)


@receiver(setting_changed)
def _reset(setting: str, **kwargs: Any) -> None:
    if setting in ("LAYERQ", "SECRET_KEY", "CHANNEL_LAYERS"):
        get_settings.cache_clear()
        from . import signing

        signing.signing_key.cache_clear()
