"""structlog set-up for process entry points (runworker, the reference deployment).

Library code only calls ``structlog.get_logger``; this module is what a
process calls once at start: console lines on a TTY, JSON lines otherwise,
and the job context bound through contextvars merged into every line.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import msgspec
import structlog

_encoder = msgspec.json.Encoder(enc_hook=str)


class _Stamper:
    """structlog processor: ``timestamp`` as ISO 8601 UTC, e.g. 2026-11-30T18:26:00.123456Z.

    What ``TimeStamper(fmt="iso", utc=True)`` writes, for a fraction of its
    cost (it builds a datetime a line): the date and time are formatted once
    a second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: object, name: str, event: MutableMapping[str, Any]) -> Any:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


def _dumps(event: object, **kwargs: object) -> str:
    # msgspec writes a JSON line several times faster than json.dumps; values
    # it cannot encode (paths, decimals, ...) are written as their str().
    return _encoder.encode(event).decode()


class _TurnLogger:
    """Writes log lines to ``file``; lines logged in an event loop go out once a turn.

    A busy worker logs a line per job. Written one by one, each line costs a
    write system call, more than the job's own bookkeeping; gathered, the lines
    of one loop turn leave in one write at the start of the next turn. Lines
    logged outside a loop (threads, sync code), and warnings and errors, are
    written at once, after whatever is waiting, so the order is kept.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # a flush is scheduled there
        atexit.register(self.flush)

    def later(self, message: str) -> None:
        """Write ``message`` by the next loop turn (at once outside a loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.now(message)
            return
        with self._lock:
            self._lines.append(message)
            if self._flush_on is loop:
                return
            self._flush_on = loop
        loop.call_soon(self.flush)

    def now(self, message: str) -> None:
        """Write ``message`` and any lines waiting before it, now."""
        with self._lock:
            self._lines.append(message)
            self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        self._flush_on = None
        if self._lines:
            lines, self._lines = self._lines, []
            lines.append("")
            self._file.write("\n".join(lines))
            self._file.flush()

    msg = log = debug = info = later
    warn = warning = fatal = failure = err = error = critical = exception = now


class _TurnLoggerFactory:
    """structlog logger factory: one :class:`_TurnLogger` per file, shared."""

    def __init__(self, file: TextIO) -> None:
        self._logger = _TurnLogger(file)

    def __call__(self, *args: object) -> _TurnLogger:
        return self._logger


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
            _Stamper(),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_TurnLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
