"""Taking and waiting for messages on Redis, without losing any to cancellation.

A receiver runs the (non-blocking) take script; when nothing is ready it
BLPOPs the channel's wake list, which every store pushes a token to. Wake
tokens carry no data, so a cancelled or retried BLPOP loses nothing. A take
whose caller is cancelled after it was sent keeps its replies: when they come,
the messages Redis handed over go to an ``orphan`` callback (a buffer, or a
release) instead of vanishing (channels_redis#348).

A worker waiting on one channel sends the BLPOP and the take script in one
pipeline: Redis runs the take the moment a token arrives, and the messages
come back with the wake-up, in one hop instead of two. An idle worker sends
that pipeline at once (see RedisChannelLayer._first_block).
"""

from __future__ import annotations

import asyncio
import time
import types
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import structlog
from redis.exceptions import NoScriptError

from .. import clock
from ..jobs import JobRecord
from .redis_codec import LOCAL_CHANNEL_KEY, decode_message, decode_record, number, pairs
from .redis_conn import BLOCK_MAX, Call, SyncPipe, Target, check
from .redis_keys import Script
from .redis_pipe import AsyncPipe, BlockingPool, Early, Late

log = structlog.get_logger("layerq")

#: (id, payload, attempt, token, reclaimed), one per message, from redis_claim.lua
Row = list[Any]
Orphan = Callable[[list[Row]], None]


class RecordKeys(NamedTuple):
    """Where one job's record is read from, and where its end is signalled."""

    job_id: str
    channel: str  #: where the job is stored (non-local)
    record: str  #: the record hash: what changed, or everything once it ended
    done: str  #: the list its end pushes a token to, when watched
    messages: str  #: the channel's message hash: the payload of a job not yet ended


def read_record_calls(where: RecordKeys) -> list[Call]:
    """Read a job's record: its payload first, then its record hash.

    In this order the two need no script to agree: a payload, once read,
    never changes, and a job only moves on, so a hash read after it is as new
    or newer (see decode_record).
    """
    return [("HGET", where.messages, where.job_id), ("HGETALL", where.record)]


def decode_read(where: RecordKeys, payload: bytes | None, raw: list[Any]) -> JobRecord | None:
    """The record from the replies of :func:`read_record_calls`."""
    return decode_record(pairs(raw), payload, where.channel)


class LocalBox:
    """Process-local channels sharing one non-local name: one reader, many queues."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[dict[str, Any]]] = {}
        self.event = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.waiters = 0

    def signal(self) -> None:
        # A fresh event per generation: waiters that saw the old one wake, and
        # nobody clears a shared event under another waiter's feet.
        event, self.event = self.event, asyncio.Event()
        event.set()

    def dispatch(self, rows: list[Row]) -> None:
        """Hand taken messages to the queues of their full channel names."""
        for message in messages(rows):
            target = message.pop(LOCAL_CHANNEL_KEY, None)
            if isinstance(target, str):
                self.queues.setdefault(target, deque()).append(message)
        self.signal()


class LoopState:
    """Everything bound to one event loop: connections, buffers, local readers."""

    def __init__(self, targets: list[Target]) -> None:
        #: per host: the pipelined connection, and connections for blocking
        self.pipes = [AsyncPipe(target) for target in targets]
        self.pools = [BlockingPool(target) for target in targets]
        self.buffers: dict[str, deque[dict[str, Any]]] = {}
        self.orphaned: dict[str, set[asyncio.Future[Any]]] = {}
        self.local: dict[str, LocalBox] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.rotation = 0
        #: channels whose last take left nothing ready, and their next due times
        self.drained: set[str] = set()
        self.next_due: dict[str, float | None] = {}
        #: settles in flight, by channel base
        self.settling: dict[str, int] = {}

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        """Run ``coroutine`` in the background, kept referenced until it ends."""
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(_consume_exception)


async def take(
    pipe: AsyncPipe,
    script: Script,
    base: str,
    limit: int,
    lease: float,
    orphan: Orphan,
    orphaned: set[asyncio.Future[Any]] | None = None,
    pool: BlockingPool | None = None,
    block: float = 0.0,
    early: Callable[[list[Row]], None] | None = None,
    running: int | None = None,
) -> tuple[list[Row], float | None]:
    """Run the take script (lease > 0: claim; 0: receive); also the next due time.
    ``running``: how many of the jobs taken get their records marked running.

    With ``pool`` and ``block``, first wait up to ``block`` s for a wake token
    of ``base``, in the same pipeline (see the module docstring). A take whose
    caller was cancelled stays in ``orphaned`` until its rows have been handed
    to ``orphan``, so the next receiver can wait for them. ``early`` gets the
    rows the moment they are read, before this returns them (on a connection
    already open): from then on they are its, even if the caller is cancelled.
    """
    now = clock.now()
    deadline = number(now + lease) if lease > 0 else "0"
    # After a block, "now" is when the pipeline left: due times and expired
    # leases may be seen up to ``block`` late (never early); the caller's next
    # take sees them.
    args: list[Any] = [number(now), limit, deadline]
    if running is not None and running < limit:
        args.append(running)  # (not below 0: RedisChannelLayer._claim_once clamps it)
    call: Call = ("EVALSHA", script, [base], args)
    landed: asyncio.Future[None] | None = None
    came = False

    def late(replies: list[Any] | None) -> None:
        # Its caller gave up before the replies came (None: they never will).
        # It may run before that caller resumes with the cancel (both in one
        # loop turn): ``came`` tells it there is then nothing left to wait for.
        nonlocal came
        came = True
        if replies is not None:
            _adopt(replies, orphan)
        if landed is not None and not landed.done():
            landed.set_result(None)

    handed = False

    def hand(replies: list[Any]) -> None:
        # In the protocol's read, before the caller resumes: a worker starts
        # the handlers now instead of a loop turn later. Error replies, and an
        # empty take, are left to the caller.
        nonlocal handed
        last = replies[-1] if replies else None
        if early is not None and isinstance(last, list) and len(last) == 2 and last[1]:
            handed = True
            try:
                early(last[1])
            except Exception:  # a bug must not break the connection's read
                log.exception("worker.internal_error")

    # Only a worker's claims hand rows over; other takes pay nothing for it.
    handing = hand if early is not None else None
    future, queued = _submit(pipe, call, pool, base, block, late, handing)
    try:
        # A call queued on an open connection is awaited as it is: cancelling
        # it hands its replies to late(). A connecting task is shielded.
        replies = await (future if queued else asyncio.shield(future))
    except asyncio.CancelledError:
        if handed:
            raise  # the rows went to early(): they are in its hands
        # The script may have run already; its messages must not vanish.
        if not future.cancelled():
            future.add_done_callback(lambda done: _adopt_done(done, orphan))
            waiting: asyncio.Future[Any] = future
        elif came:
            raise  # late() has had the replies: their rows are with orphan already
        else:
            waiting = landed = asyncio.get_running_loop().create_future()
        if orphaned is not None:
            orphaned.add(waiting)
            waiting.add_done_callback(orphaned.discard)
        raise
    try:
        raw_due, rows = check(replies)[-1]
    except NoScriptError:  # a restarted Redis: call() loads the script and runs it
        ((raw_due, rows),) = await pipe.call([call])
    return rows, (float(raw_due) if raw_due else None)


def _submit(
    pipe: AsyncPipe,
    call: Call,
    pool: BlockingPool | None,
    base: str,
    block: float,
    late: Late,
    early: Early | None,
) -> tuple[asyncio.Future[list[Any]], bool]:
    """The take's replies, coming, and whether they were queued on an open
    connection (no task); else a task connects (and retries) first."""
    if pool is None:
        future = pipe.submit([call], late, early)
        if future is None:
            return asyncio.ensure_future(pipe.call([call])), False
        return future, True
    calls = [("BLPOP", f"{base}:wake", _block_seconds(block)), call]
    blocking = pool.acquire()
    future = blocking.submit(calls, late, early)
    if future is None:
        pool.release(blocking)
        return asyncio.ensure_future(pool.call(calls)), False
    future.add_done_callback(lambda _: pool.release(blocking))
    return future, True


async def block(
    pools: Sequence[BlockingPool], bases: Sequence[tuple[int, str]], timeout: float
) -> None:
    """Wait up to ``timeout`` s for a wake token on any of ``bases`` (host index, base)."""
    timeout = max(0.01, round(timeout, 3))
    by_host: dict[int, list[str]] = {}
    for index, base in bases:
        by_host.setdefault(index, []).append(f"{base}:wake")
    if len(by_host) == 1:
        ((index, keys),) = by_host.items()
        await pools[index].call([("BLPOP", *keys, timeout)])
        return
    waits = [
        asyncio.ensure_future(pools[i].call([("BLPOP", *keys, timeout)]))
        for i, keys in by_host.items()
    ]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    for wait in done:
        wait.result()


async def wait_record(
    pool: BlockingPool, script: Script, where: RecordKeys, timeout: float | None
) -> JobRecord | None:
    """The record once terminal (or as it is after ``timeout`` s); None without one.

    One round trip a wait: the watch script marks the record watched (so the
    job's end pushes a token to ``done``), a BLMOVE of ``done`` onto itself
    blocks until that token comes (and leaves it for every other waiter), and
    the reads of :func:`read_record_calls` behind it read the record as it
    then is. Blocking is in chunks of at most BLOCK_MAX, each ending with
    that read.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    async with pool.pipe() as pipe:
        while True:
            left = _left(deadline, loop.time())
            if left <= 0:
                return decode_read(where, *await pipe.call(read_record_calls(where)))
            *_, payload, raw = await pipe.call(_wait_calls(script, where, left))
            found = decode_read(where, payload, raw)
            if found is None or found.status.is_terminal or _left(deadline, loop.time()) <= 0:
                return found


def wait_record_sync(
    pipe: SyncPipe, script: Script, where: RecordKeys, timeout: float | None
) -> JobRecord | None:
    """:func:`wait_record` from sync code."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _left(deadline, time.monotonic())
        if left <= 0:
            return decode_read(where, *pipe.call(read_record_calls(where)))
        *_, payload, raw = pipe.call(_wait_calls(script, where, left))
        found = decode_read(where, payload, raw)
        if found is None or found.status.is_terminal or _left(deadline, time.monotonic()) <= 0:
            return found


def _left(deadline: float | None, now: float) -> float:
    """How long the next chunk of a wait blocks; 0 (or less) once the deadline passed."""
    return BLOCK_MAX if deadline is None else min(BLOCK_MAX, deadline - now)


def _wait_calls(script: Script, where: RecordKeys, left: float) -> list[Call]:
    return [
        ("EVALSHA", script, [where.record, where.done, where.messages], [where.job_id]),
        ("BLMOVE", where.done, where.done, "RIGHT", "LEFT", _block_seconds(left)),
        *read_record_calls(where),
    ]


def _block_seconds(left: float) -> float:
    # 0 would block forever; Redis reads the timeout to the millisecond.
    return max(0.001, round(left, 3))


def block_for(next_due: float | None, cap: float) -> float:
    """How long to block: ``cap``, or less when a delayed message or lease falls due."""
    if next_due is None:
        return cap
    return min(cap, max(0.0, next_due - clock.now()))


def messages(rows: list[Row]) -> list[dict[str, Any]]:
    """The decoded messages of ``rows``; undecodable bytes are skipped."""
    out = []
    for _, payload, *_rest in rows:
        try:
            out.append(decode_message(payload))
        except ValueError:
            continue  # nothing a Channels consumer could be given
    return out


async def receive_local(
    box: LocalBox, channel: str, reader: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """The next message of a ``!`` channel, read by the box's (shared) reader."""
    queue = box.queues.setdefault(channel, deque())
    box.waiters += 1
    try:
        while True:
            if queue:
                return queue.popleft()
            previous = box.reader
            if previous is not None and previous.done():
                box.reader = None
                if not previous.cancelled() and previous.exception() is not None:
                    raise previous.exception()  # type: ignore[misc]
            if box.reader is None:
                box.reader = asyncio.ensure_future(reader())
                box.reader.add_done_callback(_consume_exception)
            # No await between the queue check and taking the event: a dispatch
            # after the check sets exactly this event.
            await box.event.wait()
    finally:
        box.waiters -= 1


async def close_state(state: LoopState) -> None:
    """Stop local readers and background tasks, then close the clients."""
    readers = [box.reader for box in state.local.values() if box.reader is not None]
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, *state.background, return_exceptions=True)
    for pipe in state.pipes:
        await pipe.close()
    for pool in state.pools:
        await pool.close()


def close_with_loop(
    loop: asyncio.AbstractEventLoop, states: weakref.WeakKeyDictionary[Any, LoopState]
) -> None:
    """Close ``loop``'s connections when it closes (as channels_redis does).

    Loops come and go (``async_to_sync``, tests); connections left open on a
    closed loop cannot be closed any more and leak.
    """
    original = loop.close
    states_ref = weakref.ref(states)

    def close(self: asyncio.AbstractEventLoop) -> None:
        owner = states_ref()
        state = owner.pop(self, None) if owner is not None else None
        if state is not None and not self.is_closed() and not self.is_running():
            self.run_until_complete(close_state(state))
        self.close = original  # type: ignore[method-assign]
        original()

    loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]


def _adopt_done(done: asyncio.Future[list[Any]], orphan: Orphan) -> None:
    if not done.cancelled() and done.exception() is None:
        _adopt(done.result(), orphan)


def _adopt(replies: list[Any], orphan: Orphan) -> None:
    """Hand the rows a take's ``replies`` carry to ``orphan`` (none for an error)."""
    reply = replies[-1]
    if isinstance(reply, list) and reply[1]:  # not an error: taken rows
        orphan(reply[1])


def _consume_exception(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
