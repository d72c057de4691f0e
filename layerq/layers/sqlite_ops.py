"""The transactions of SQLiteChannelLayer, one function each.

Each function takes the connection of an open ``BEGIN IMMEDIATE`` transaction
(see ``Database.write``) or, for reads, any connection. Changes to a leased
message match both its id and the lease token, so a worker whose lease was
lost (and the job taken by another) changes nothing: it gets False back.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from .. import clock
from ..events import ENVELOPE_KEY
from ..jobs import JobRecord, JobStatus
from .base import DeadLetter, Delivery

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
_decode_any = msgspec.msgpack.Decoder().decode

RECORD_COLUMNS = (
    "id, type, channel, status, attempt, max_attempts, enqueued_at, started_at, finished_at,"
    " progress, progress_message, result, error_type, error_message"
)


def job_id_of(message: dict[str, Any]) -> str | None:
    """The job id in a message's envelope, if it has one."""
    envelope = message.get(ENVELOPE_KEY)
    job_id = envelope.get("id") if isinstance(envelope, dict) else None
    return job_id if isinstance(job_id, str) else None


def record_from_row(row: Sequence[Any]) -> JobRecord:
    """A JobRecord from a row of RECORD_COLUMNS."""
    values = dict(zip(RECORD_COLUMNS.replace(" ", "").split(","), row, strict=True))
    values["status"] = JobStatus(values["status"])
    if values["result"] is not None:
        values["result"] = _decode_any(values["result"])
    return JobRecord(**values)


# --- plain Channels messages -------------------------------------------------------


def insert(
    db: sqlite3.Connection,
    channel: str,
    message: dict[str, Any],
    capacity: int,
    expiry: float,
    delay: float = 0.0,
) -> bool:
    """Store one message unless the channel holds ``capacity``; False when full.

    Job messages never expire; plain ones expire ``expiry`` seconds from now.
    """
    now = clock.now()
    if _size(db, channel) >= capacity:
        # Expired plain messages count until the periodic sweep removes them: drop
        # this channel's first, so a channel whose messages all expired is not full.
        db.execute("DELETE FROM messages WHERE channel = ? AND expires_at <= ?", (channel, now))
        if _size(db, channel) >= capacity:
            return False
    job_id = job_id_of(message)
    db.execute(
        "INSERT INTO messages (channel, body, ready_at, expires_at, job_id) VALUES (?,?,?,?,?)",
        (channel, encode(message), now + delay, None if job_id else now + expiry, job_id),
    )
    return True


def _size(db: sqlite3.Connection, channel: str) -> int:
    row = db.execute("SELECT size FROM channel_sizes WHERE channel = ?", (channel,)).fetchone()
    return 0 if row is None else int(row[0])


def pop(db: sqlite3.Connection, channel: str) -> bytes | None:
    """Remove and return the oldest ready message of ``channel`` (at most once)."""
    now = clock.now()
    row = db.execute(
        "DELETE FROM messages WHERE id = (SELECT id FROM messages WHERE channel = ?"
        " AND ready_at <= ? AND (expires_at IS NULL OR expires_at > ?)"
        " ORDER BY ready_at, id LIMIT 1) RETURNING body",
        (channel, now, now),
    ).fetchone()
    return None if row is None else bytes(row[0])


def sweep(db: sqlite3.Connection) -> None:
    """Delete expired plain messages, group memberships and job records."""
    now = clock.now()
    db.execute("DELETE FROM messages WHERE expires_at < ?", (now,))
    db.execute("DELETE FROM groups WHERE expires_at < ?", (now,))
    db.execute("DELETE FROM jobs WHERE expires_at < ?", (now,))


def flush(db: sqlite3.Connection) -> None:
    """Delete everything."""
    for table in ("messages", "channel_sizes", "groups", "jobs", "dead_letters"):
        db.execute(f"DELETE FROM {table}")


def group_add(db: sqlite3.Connection, group: str, channel: str, expiry: float) -> None:
    db.execute(
        "INSERT INTO groups (grp, channel, expires_at) VALUES (?,?,?)"
        " ON CONFLICT (grp, channel) DO UPDATE SET expires_at = excluded.expires_at",
        (group, channel, clock.now() + expiry),
    )


def group_discard(db: sqlite3.Connection, group: str, channel: str) -> None:
    db.execute("DELETE FROM groups WHERE grp = ? AND channel = ?", (group, channel))


def group_members(db: sqlite3.Connection, group: str) -> list[str]:
    rows = db.execute(
        "SELECT channel FROM groups WHERE grp = ? AND expires_at > ?", (group, clock.now())
    ).fetchall()
    return [row[0] for row in rows]


# --- jobs --------------------------------------------------------------------------


def add_record(db: sqlite3.Connection, record: JobRecord, replace: bool = False) -> bool:
    """Store a new job's queued record; False when one with its id is kept (unless
    ``replace``: then the new one takes its place, every field afresh)."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    conflict = "" if replace else " ON CONFLICT (id) DO NOTHING"
    cursor = db.execute(
        f"{verb} INTO jobs (id, type, channel, status, max_attempts, enqueued_at)"
        f" VALUES (?,?,?,?,?,?){conflict}",
        (
            record.id,
            record.type,
            record.channel,
            record.status.value,
            record.max_attempts,
            record.enqueued_at,
        ),
    )
    return cursor.rowcount == 1


def drop_record(db: sqlite3.Connection, job_id: str) -> None:
    db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))


def job_stored(db: sqlite3.Connection, job_id: str) -> bool:
    """Whether a message of ``job_id`` is stored (waiting, delayed or leased)."""
    row = db.execute("SELECT 1 FROM messages WHERE job_id = ? LIMIT 1", (job_id,)).fetchone()
    return row is not None


def claim(
    db: sqlite3.Connection,
    channels: Sequence[str],
    limit: int,
    lease: float,
    running: int | None = None,
) -> list[Delivery]:
    """Lease up to ``limit`` ready messages and mark their jobs running (only the
    first ``running`` ones' when given; see QueueLayer.claim)."""
    token = secrets.token_hex(8)
    now = clock.now()
    marks = ",".join("?" * len(channels))
    rows = db.execute(
        f"SELECT id, channel, body, attempts, token, job_id FROM messages"
        f" WHERE channel IN ({marks}) AND ready_at <= ?"
        f" AND (expires_at IS NULL OR expires_at > ?) ORDER BY ready_at, id LIMIT ?",
        (*channels, now, now, limit),
    ).fetchall()
    deliveries: list[Delivery] = []
    for id_, channel, body, attempts, previous, job_id in rows:
        try:
            message = decode(body)
        except msgspec.DecodeError:
            # Kept as a delivery so the worker dead-letters it with a reason.
            message = {"__undecodable__": bytes(body)[:100].hex()}
        deliveries.append(
            Delivery(
                id=str(id_),
                channel=channel,
                message=message,
                attempt=attempts + 1,
                token=token,
                reclaimed=previous is not None,
                job_id=job_id,
                marked_running=running is None or len(deliveries) < running,
            )
        )
    db.executemany(
        "UPDATE messages SET attempts = attempts + 1, token = ?, ready_at = ? WHERE id = ?",
        [(token, now + lease, int(d.id)) for d in deliveries],
    )
    db.executemany(
        "UPDATE jobs SET status = 'running', attempt = ?, started_at = ? WHERE id = ?",
        [(d.attempt, now, d.job_id) for d in deliveries if d.job_id and d.marked_running],
    )
    return deliveries


def start(db: sqlite3.Connection, delivery: Delivery) -> bool:
    """Mark a prefetched delivery's job running, as claim() would have."""
    held = db.execute(
        "SELECT 1 FROM messages WHERE id = ? AND token = ?", (int(delivery.id), delivery.token)
    ).fetchone()
    if held is None:
        return False
    _update_job(
        db,
        delivery,
        "UPDATE jobs SET status = 'running', attempt = ?, started_at = ? WHERE id = ?",
        delivery.attempt,
        clock.now(),
    )
    return True


def extend(db: sqlite3.Connection, deliveries: Sequence[Delivery], lease: float) -> None:
    until = clock.now() + lease
    db.executemany(
        "UPDATE messages SET ready_at = ? WHERE id = ? AND token = ?",
        [(until, int(d.id), d.token) for d in deliveries],
    )


def _leased(db: sqlite3.Connection, sql: str, delivery: Delivery, *args: Any) -> bool:
    """Run ``sql`` (ending ``WHERE id = ? AND token = ?``) on our lease only."""
    return db.execute(sql, (*args, int(delivery.id), delivery.token)).rowcount == 1


def _update_job(db: sqlite3.Connection, delivery: Delivery, sql: str, *args: Any) -> None:
    if delivery.job_id is not None:
        db.execute(sql, (*args, delivery.job_id))


def ack(db: sqlite3.Connection, delivery: Delivery, result: Any, ttl: float) -> bool:
    if not _leased(db, "DELETE FROM messages WHERE id = ? AND token = ?", delivery):
        return False
    now = clock.now()
    _update_job(
        db,
        delivery,
        "UPDATE jobs SET status = 'succeeded', result = ?, finished_at = ?, progress = 1.0,"
        " error_type = NULL, error_message = NULL, expires_at = ? WHERE id = ?",
        encode(result),
        now,
        now + ttl,
    )
    return True


def retry(
    db: sqlite3.Connection, delivery: Delivery, delay: float, error_type: str, error: str
) -> bool:
    sql = "UPDATE messages SET token = NULL, ready_at = ? WHERE id = ? AND token = ?"
    if not _leased(db, sql, delivery, clock.now() + delay):
        return False
    _update_job(
        db,
        delivery,
        "UPDATE jobs SET status = 'retrying', error_type = ?, error_message = ? WHERE id = ?",
        error_type,
        error,
    )
    return True


def release(db: sqlite3.Connection, delivery: Delivery) -> bool:
    sql = (
        "UPDATE messages SET token = NULL, ready_at = ?, attempts = attempts - 1"
        " WHERE id = ? AND token = ?"
    )
    if not _leased(db, sql, delivery, clock.now()):
        return False
    # (Set, not decremented: a prefetched delivery's claim left the attempt as it was.)
    _update_job(
        db,
        delivery,
        "UPDATE jobs SET status = 'queued', attempt = ? WHERE id = ?",
        delivery.attempt - 1,
    )
    return True


def dead_letter(
    db: sqlite3.Connection,
    delivery: Delivery,
    reason: str,
    error_type: str,
    error: str,
    ttl: float,
) -> bool:
    row = db.execute(
        "DELETE FROM messages WHERE id = ? AND token = ? RETURNING channel, body",
        (int(delivery.id), delivery.token),
    ).fetchone()
    if row is None:
        return False
    now = clock.now()
    db.execute(
        "INSERT INTO dead_letters (channel, body, reason, failed_at, job_id) VALUES (?,?,?,?,?)",
        (row[0], row[1], reason, now, delivery.job_id),
    )
    _update_job(
        db,
        delivery,
        "UPDATE jobs SET status = 'failed', error_type = ?, error_message = ?, finished_at = ?,"
        " expires_at = ? WHERE id = ?",
        error_type,
        error,
        now,
        now + ttl,
    )
    return True


def set_progress(db: sqlite3.Connection, job_id: str, progress: float, note: str | None) -> None:
    db.execute(
        "UPDATE jobs SET progress = ?, progress_message = ? WHERE id = ?",
        (progress, note, job_id),
    )


def get_record(db: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = db.execute(
        f"SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?"
        " AND (expires_at IS NULL OR expires_at > ?)",
        (job_id, clock.now()),
    ).fetchone()
    return None if row is None else record_from_row(row)


def get_message(db: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    """The stored message of ``job_id``: waiting, delayed or leased, else dead-lettered."""
    row = (
        db.execute("SELECT body FROM messages WHERE job_id = ? LIMIT 1", (job_id,)).fetchone()
        or db.execute(
            "SELECT body FROM dead_letters WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job_id,)
        ).fetchone()
    )
    return None if row is None else decode(row[0])


def cancel(db: sqlite3.Connection, job_id: str, ttl: float) -> bool:
    """Remove a job no live lease holds; record cancelled."""
    now = clock.now()
    removed = db.execute(
        "DELETE FROM messages WHERE job_id = ? AND (token IS NULL OR ready_at <= ?)",
        (job_id, now),
    ).rowcount
    if removed:
        db.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ? WHERE id = ?",
            (now, now + ttl, job_id),
        )
    return bool(removed)


def dead_letters(db: sqlite3.Connection, channel: str, limit: int) -> list[DeadLetter]:
    rows = db.execute(
        "SELECT id, channel, body, reason, failed_at, job_id FROM dead_letters"
        " WHERE channel = ? ORDER BY id LIMIT ?",
        (channel, limit),
    ).fetchall()
    letters = []
    for id_, chan, body, reason, failed_at, job_id in rows:
        try:
            message: dict[str, Any] | None = decode(body)
        except msgspec.DecodeError:
            message = None
        letters.append(
            DeadLetter(
                id=str(id_),
                channel=chan,
                message=message,
                reason=reason,
                failed_at=failed_at,
                job_id=job_id,
            )
        )
    return letters


def requeue_dead(db: sqlite3.Connection, channel: str, ids: Sequence[str] | None) -> int:
    """Move dead letters back to ``channel`` as new first attempts."""
    sql = "SELECT id, body, job_id FROM dead_letters WHERE channel = ?"
    params: list[Any] = [channel]
    if ids is not None:
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        params.extend(int(i) for i in ids)
    rows = db.execute(sql, params).fetchall()
    now = clock.now()
    for id_, body, job_id in rows:
        db.execute(
            "INSERT INTO messages (channel, body, ready_at, job_id) VALUES (?,?,?,?)",
            (channel, body, now, job_id),
        )
        db.execute("DELETE FROM dead_letters WHERE id = ?", (id_,))
        if job_id is not None:
            db.execute(
                "UPDATE jobs SET status = 'queued', attempt = 0, finished_at = NULL,"
                " expires_at = NULL, error_type = NULL, error_message = NULL WHERE id = ?",
                (job_id,),
            )
    return len(rows)


def pending(db: sqlite3.Connection, channel: str) -> int:
    return _size(db, channel)
