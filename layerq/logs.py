"""structlog set-up for process entry points (runworker, the reference deployment).

Library code only calls ``structlog.get_logger``; this module is what a
process calls once at start: console lines on a TTY, JSON lines otherwise,
and the job context bound through contextvars merged into every line.
"""

from __future__ import annotations

import logging
import sys

import msgspec
import structlog

_encoder = msgspec.json.Encoder(enc_hook=str)


def _dumps(event: object, **kwargs: object) -> str:
    # msgspec writes a JSON line several times faster than json.dumps; values
    # it cannot encode (paths, decimals, ...) are written as their str().
    return _encoder.encode(event).decode()


def configure(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog for this process (``json=None``: JSON unless stderr is a TTY)."""
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
