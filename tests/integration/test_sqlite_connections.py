"""The SQLite layer's connections are closed, not left to the garbage collector.

Python 3.13 warns (ResourceWarning) about a connection collected open; a
Django thread pool's finished threads and every dropped layer would warn.
"""

from __future__ import annotations

import gc
import sqlite3
import threading
from pathlib import Path

import pytest

from layerq.layers.sqlite_db import Database


def _closed(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_a_threads_connection_is_closed_when_the_thread_ends(tmp_path: Path) -> None:
    """A pool thread that used the layer and ended leaves no open connection."""
    database = Database(tmp_path / "layer.sqlite3")
    seen: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: seen.append(database.conn()))
    thread.start()
    thread.join()
    del thread
    gc.collect()
    assert len(seen) == 1
    assert _closed(seen[0])
    assert not _closed(database.conn())  # this thread's own is open and working


def test_every_connection_is_closed_with_its_database(tmp_path: Path) -> None:
    """A dropped layer's connections close, those of threads still alive too."""
    database = Database(tmp_path / "layer.sqlite3")
    mine = database.conn()
    gate, done = threading.Event(), threading.Event()
    theirs: list[sqlite3.Connection] = []
    lent = [database]  # the thread keeps no reference once it has its connection

    def hold() -> None:  # a thread still alive when the Database goes
        theirs.append(lent.pop().conn())
        gate.set()
        done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert gate.wait(10)
        del database
        gc.collect()
        assert _closed(mine)
        assert _closed(theirs[0])
    finally:
        done.set()
        thread.join()


@pytest.mark.filterwarnings("error::ResourceWarning")
def test_dropping_a_used_database_warns_nothing(tmp_path: Path) -> None:
    """No ResourceWarning (Python 3.13+) when a used layer is collected."""
    database = Database(tmp_path / "layer.sqlite3")
    database.write(lambda db: db.execute("SELECT 1"))
    del database
    gc.collect()
