"""Handler-side timestamps: every benchmark handler calls :func:`mark` first.

Stamps are kept in the worker's memory and written once, as one JSON file per
phase, when the phase's last job has started: the harness never polls the
worker while it measures, and a handler pays a dict insert, not a round trip.
Stdlib only, because it runs inside every peer's virtualenv.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from pathlib import Path


def starts_path(directory: Path, phase: str) -> Path:
    """Where the start stamps of ``phase`` are written."""
    return directory / f"starts-{phase}.json"


class Recorder:
    """Start times of jobs by phase and index, flushed when a phase is complete."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()  # thread pools (Celery threads, Huey) call mark() at once
        self._phases: dict[str, dict[int, float]] = {}

    def mark(self, phase: str, index: int, total: int) -> float:
        """Stamp job ``index`` of ``phase`` as started now; the stamp."""
        now = time.time()
        with self._lock:
            stamps = self._phases.setdefault(phase, {})
            # At-least-once systems may run a job twice: the first start counts.
            stamps.setdefault(index, now)
            complete = len(stamps) == total
        if complete:
            self._flush(phase, stamps, total)
        return now

    def _flush(self, phase: str, stamps: dict[int, float], total: int) -> None:
        path = starts_path(self.directory, phase)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps([stamps[i] for i in range(total)]))
        temporary.replace(path)  # atomic: the harness never reads half a file


@functools.cache
def recorder() -> Recorder:
    """This worker process's recorder, writing to ``$BENCH_DIR``."""
    return Recorder(Path(os.environ["BENCH_DIR"]))


def mark(phase: str, index: int, total: int) -> float:
    """Stamp the start of one job (see :meth:`Recorder.mark`)."""
    return recorder().mark(phase, index, total)
