"""The SQLite file behind SQLiteChannelLayer: schema, connections, transactions.

One file serves every process on the machine. WAL lets readers run beside the
one writer; every write is a short ``BEGIN IMMEDIATE`` transaction, so a
writer waits for the lock (``busy_timeout``) at the start instead of failing
half-way when a deferred transaction tries to upgrade. A write that still
cannot get the lock after bounded retries raises TransportError: a caller
never sees ``database is locked``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import TransportError

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    body BLOB NOT NULL,
    ready_at REAL NOT NULL,         -- not before: delay, retry backoff, or lease end
    expires_at REAL,                -- plain Channels messages only; jobs never expire
    job_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    token TEXT                      -- the current lease; NULL when not leased
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (channel, ready_at);
CREATE INDEX IF NOT EXISTS messages_job ON messages (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;

-- Kept by triggers so a capacity check reads one row instead of counting.
CREATE TABLE IF NOT EXISTS channel_sizes (
    channel TEXT PRIMARY KEY,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS messages_count_in AFTER INSERT ON messages BEGIN
    INSERT INTO channel_sizes (channel, size) VALUES (NEW.channel, 1)
        ON CONFLICT (channel) DO UPDATE SET size = size + 1;
END;
CREATE TRIGGER IF NOT EXISTS messages_count_out AFTER DELETE ON messages BEGIN
    UPDATE channel_sizes SET size = size - 1 WHERE channel = OLD.channel;
END;

CREATE TABLE IF NOT EXISTS groups (
    grp TEXT NOT NULL,
    channel TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (grp, channel)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    enqueued_at REAL,
    started_at REAL,
    finished_at REAL,
    progress REAL,
    progress_message TEXT,
    result BLOB,
    error_type TEXT,
    error_message TEXT,
    expires_at REAL                 -- set when the job ends: result_ttl
);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL,
    job_id TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_channel ON dead_letters (channel, id);
CREATE INDEX IF NOT EXISTS dead_letters_job ON dead_letters (job_id) WHERE job_id IS NOT NULL;
"""

#: write attempts before TransportError; each waits up to busy_timeout for the lock
WRITE_TRIES = 3


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class _Held:
    """A thread's connection: closed when its thread ends.

    Left to the garbage collector, an open connection is closed without a
    word before Python 3.13 and with a ResourceWarning since; a Django
    thread pool's threads, and every layer a test suite drops, would warn.
    """

    __slots__ = ("db", "open")

    def __init__(self, db: sqlite3.Connection, open: set[sqlite3.Connection]) -> None:
        self.db, self.open = db, open
        open.add(db)

    def __del__(self) -> None:
        self.open.discard(self.db)
        self.db.close()


def _close_all(connections: set[sqlite3.Connection]) -> None:
    # Runs when its Database is collected, before the garbage collector
    # finalises the connections themselves (weakref callbacks come first).
    for db in list(connections):
        db.close()
    connections.clear()


class Database:
    """Thread-local connections to one SQLite file, and its write transactions."""

    def __init__(self, path: str | Path, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._init_lock = threading.Lock()
        # Threads of one process queue here for the write lock: SQLite's busy
        # handler would make them sleep and poll for it instead.
        self._write_lock = threading.Lock()
        self._initialised = False
        #: every thread's open connection (see _Held), closed with the Database
        self._open: set[sqlite3.Connection] = set()
        weakref.finalize(self, _close_all, self._open)

    def connect(self) -> sqlite3.Connection:
        """A new connection with layerq's pragmas; the caller owns it."""
        db = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # NORMAL in WAL mode survives a process crash (what a killed worker is);
        # only a power cut can lose the last commits.
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    def connect_ready(self) -> sqlite3.Connection:
        """:meth:`connect`, once the schema exists (for connections that only read)."""
        self._ensure_schema()
        return self.connect()

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, creating the schema on first use."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            self._ensure_schema()
            held = self._local.held = _Held(self.connect(), self._open)
        return held.db

    def _ensure_schema(self) -> None:
        with self._init_lock:
            if self._initialised:
                return
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = self.connect()
            try:
                for attempt in range(WRITE_TRIES):
                    try:
                        db.execute("PRAGMA journal_mode = WAL")
                        db.executescript(SCHEMA)
                        break
                    except sqlite3.OperationalError as exc:
                        if not _locked(exc) or attempt == WRITE_TRIES - 1:
                            raise TransportError(f"cannot open {self.path}: {exc}") from exc
            finally:
                db.close()
            self._initialised = True

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one immediate transaction, retrying a bounded number of times."""
        db = self.conn()
        with self._write_lock:
            for attempt in range(WRITE_TRIES):
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if not _locked(exc):
                        raise TransportError(str(exc)) from exc
                    if attempt == WRITE_TRIES - 1:
                        raise TransportError(
                            f"{self.path} stayed locked for {WRITE_TRIES}x{self.busy_timeout}s"
                        ) from exc
                    time.sleep(0.01 * (attempt + 1))
                    continue
                try:
                    result = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` outside any write transaction."""
        try:
            return fn(self.conn(), *args)
        except sqlite3.OperationalError as exc:
            raise TransportError(str(exc)) from exc
