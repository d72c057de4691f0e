"""The SQLite layer's connections: closed, not left to the garbage collector, and
never surfacing sqlite3's own 'database is locked'.

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


async def test_a_write_lock_held_past_busy_timeout_is_a_transport_error(tmp_path: Path) -> None:
    """Another process holding the write lock makes a send wait busy_timeout a try, then
    raise layerq.TransportError (never sqlite3's 'database is locked'); once the lock is
    let go, sends work again."""
    import layerq
    from layerq.layers import SQLiteChannelLayer

    path = tmp_path / "layer.sqlite3"
    layer = SQLiteChannelLayer(path=str(path), busy_timeout=0.2)
    await layer.send("c", {"type": "first"})  # the schema exists before the lock is taken
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock, as a long writer would
        with pytest.raises(layerq.TransportError):
            await layer.send("c", {"type": "blocked"})
        other.execute("ROLLBACK")
        await layer.send("c", {"type": "after"})
        assert [(await layer.receive("c"))["type"] for _ in range(2)] == ["first", "after"]
    finally:
        other.close()
        await layer.close()
