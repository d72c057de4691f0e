"""Where a job runs: the worker loop behind ``manage.py runworker``.

One asyncio loop claims deliveries (never more than its free slots plus a
bounded ``prefetch``, so a killed worker holds at most ``concurrency +
prefetch`` jobs, all under lease), runs async handlers as tasks and sync
handlers in a thread pool, heartbeats the leases of running and prefetched
jobs, and settles each delivery: ack with the result, retry with backoff, or
dead-letter with the reason. Prefetched deliveries start as slots free, without
a round trip; the claim that refills them is in flight while jobs run. Stopping
is graceful: no new claims; running jobs get ``shutdown_timeout`` seconds; the
rest (prefetched ones included) go back. How a handler is called (its timeout,
the thread pool): :mod:`layerq.handlers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import structlog

from . import clock, signing
from .conf import Settings, get_settings
from .consumers import UnknownEventType, _WorkerMixin, find_handler
from .context import JobContext, current_job
from .errors import InvalidEvent, Retry
from .events import Envelope, check_plain, read_envelope
from .handlers import HandlerRunner, job_task
from .layers import Delivery, get_layer, is_queue_layer
from .notify import job_event
from .routing import Route, resolve
from .sources import BasicSource, QueueSource

log = structlog.get_logger("layerq")

EXIT_OK = 0
EXIT_ERROR = 1

#: how long one claim waits for work before the loop looks at its stop flag again
CLAIM_WAIT = 0.5


def backoff(attempt: int, settings: Settings) -> float:
    """Delay before attempt ``attempt + 1``: exponential, capped, half of it jittered."""
    ceiling = min(settings.backoff_max, settings.backoff * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _micros(seconds: float) -> float:
    """``seconds`` (not below 0) to the nearest microsecond, for a log line: as
    ``round(seconds, 6)``, for a fifth of its cost (paid twice a job)."""
    return round(max(0.0, seconds) * 1e6) / 1e6


class _Rejected(Exception):
    """A delivery that cannot run at all; dead-letter it with this reason."""


@dataclasses.dataclass(slots=True)
class _Running:
    delivery: Delivery
    task: asyncio.Task[None] = dataclasses.field(init=False)  #: set once it is created
    settled: bool = False


class Worker:
    """Runs the consumers routed for ``channels`` until stopped (or empty, in burst)."""

    def __init__(
        self,
        application: Any,
        channels: Sequence[str],
        *,
        concurrency: int = 8,
        prefetch: int = 0,
        burst: bool = False,
        shutdown_timeout: float = 30.0,
        layer_alias: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefetch < 0:
            raise ValueError("prefetch must be 0 or more")
        self.channels = list(dict.fromkeys(channels))
        self.routes: dict[str, Route] = resolve(application, self.channels)
        self.concurrency = concurrency
        self.burst = burst
        self.shutdown_timeout = shutdown_timeout
        self.settings = get_settings()
        self.layer = get_layer(layer_alias)
        self.source: QueueSource | BasicSource = (
            QueueSource(self.layer) if is_queue_layer(self.layer) else BasicSource(self.layer)
        )
        #: deliveries claimed ahead of free slots, leased while they wait in
        #: ``_waiting``; none in basic mode, where a crash would lose them
        self.prefetch = prefetch if self.source.reliable else 0
        self._running: dict[str, _Running] = {}
        #: claimed (leased) deliveries waiting for a slot: the prefetch
        self._waiting: deque[Delivery] = deque()
        self._refill_scheduled = False
        #: prefetched jobs' records being marked running (kept referenced)
        self._marking: set[asyncio.Task[None]] = set()
        #: deliveries the claim in progress took as they arrived (id() of each)
        self._taken_early: set[int] = set()
        self._context = contextvars.copy_context()
        #: deliveries holding a slot: running, or settling where a settle does
        #: not precede the next claim (see QueueLayer.settles_precede_claims)
        self._slots: set[str] = set()
        self._early_release = bool(getattr(self.layer, "settles_precede_claims", False))
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._hard_stop = False
        self._stop_now = asyncio.Event()  #: set by a second stop: end the grace period
        self._handlers = HandlerRunner(concurrency)
        self._retry_due = 0.0  # monotonic time the last retry this worker scheduled is due
        self.processed = 0
        #: structlog's lazy proxy until run() binds the logger as configured then
        self._log: Any = log

    # --- control ---------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop claiming and drain. Second call: stop now."""
        if self._stopping:
            # _drain cancels the running jobs and returns them to their channels; a job
            # cancelled here would leave _running before _drain could return it.
            self._hard_stop = True
            self._log.warning("worker.stopping", graceful=False)
            self._stop_now.set()
        else:
            self._stopping = True
            self._log.info("worker.stopping", graceful=True, in_flight=len(self._running))
        self._slot_free.set()

    async def run(self) -> int:
        """Claim and run jobs until stopped; the process exit code."""
        # Bound once, as structlog is configured now: the module's lazy proxy
        # would look the logger up again on every call, twice a job.
        self._log = log.bind()
        self._log.info(
            "worker.started",
            channels=self.channels,
            concurrency=self.concurrency,
            layer=type(self.layer).__name__,
            burst=self.burst,
        )
        if not self.source.reliable:
            self._log.warning(
                "worker.basic_mode",
                layer=type(self.layer).__name__,
                lost="at-most-once delivery: no leases, retries, delays, job records or results",
            )
        heartbeat = asyncio.create_task(self._heartbeat())
        self._context = contextvars.copy_context()  # what run()'s caller has set
        try:
            await self._loop()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._drain()
            await self.source.close()
            self._handlers.close()
        self._log.info("worker.stopped", processed=self.processed)
        return EXIT_OK

    async def _loop(self) -> None:
        while not self._stopping:
            self._start_waiting()
            room = self.concurrency + self.prefetch - len(self._slots) - len(self._waiting)
            if room <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            wait = CLAIM_WAIT
            if self.burst:
                # Burst waits only for retries it scheduled itself: it finishes
                # what it started, but not jobs delayed by their producers.
                wait = max(0.0, min(CLAIM_WAIT, self._retry_due - time.monotonic()))
            # Fresh for each claim: ids of a claim that raised must not linger (an
            # id() may be reused by a later delivery, which would then not be taken).
            self._taken_early = set()
            # The jobs that take the free slots have their records marked running
            # by the claim; prefetched ones are marked as they start (see _start).
            free = max(0, self.concurrency - len(self._slots))
            deliveries = await self.source.claim(
                self.channels, room, self.settings.lease, wait, self._take_early, free
            )
            early = self._taken_early
            if self._stopping:
                # Those started already run on: the drain below waits for them.
                await self.source.release([d for d in deliveries if id(d) not in early])
                break
            for delivery in deliveries:
                if id(delivery) not in early:
                    self._take(delivery)
            if deliveries:
                # Let the jobs begin before the next claim is prepared and sent.
                await asyncio.sleep(0)
            if not deliveries and self.burst:
                self._start_waiting()
                if not self._running and not self._waiting:
                    if time.monotonic() < self._retry_due:
                        continue
                    break
                self._slot_free.clear()
                await self._slot_free.wait()

    def _start(self, delivery: Delivery) -> None:
        # Each job's task gets its own copy of the worker's context (whether it is
        # started here or in a connection's read, see _take_early).
        # Registered first: an eager task may settle, or even end, in its creation.
        running = self._running[delivery.id] = _Running(delivery)
        self._slots.add(delivery.id)
        if not delivery.marked_running:
            self._mark_running(delivery)
        running.task = job_task(self._handle(delivery), self._context.copy())

    def _mark_running(self, delivery: Delivery) -> None:
        """Have a prefetched job's record say it runs, as its claim left it as it
        was (queued, or retrying). Not awaited: the job starts now. Its settle
        comes after on the same connection (an outcome first makes this a no-op)."""

        async def mark() -> None:
            try:
                await self.source.start(delivery)
            except Exception as exc:  # the outcome's record update still comes
                self._log.warning("job.mark_running_failed", error=repr(exc))

        task = asyncio.ensure_future(mark())
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)

    def _take(self, delivery: Delivery) -> None:
        """Start a claimed delivery now if a slot is free, else keep it (leased)
        until one frees: behind those already waiting, in claim order."""
        self._waiting.append(delivery)
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start prefetched deliveries in the free slots, oldest first."""
        self._refill_scheduled = False
        while self._waiting and len(self._slots) < self.concurrency and not self._stopping:
            self._start(self._waiting.popleft())

    def _take_early(self, deliveries: list[Delivery]) -> None:
        """Take jobs the moment their claim's reply is read (see QueueLayer.claim):
        their handlers run a loop turn sooner than the claim could return them.
        Once stopping, none is taken: the claim returns them, to be released."""
        if self._stopping:
            return
        for delivery in deliveries:
            if id(delivery) not in self._taken_early:
                self._taken_early.add(id(delivery))
                self._take(delivery)

    def _free_slot(self, delivery: Delivery) -> None:
        self._slots.discard(delivery.id)
        if self._waiting and not self._refill_scheduled:
            # Not started here, inside the job that is ending: at the next turn.
            self._refill_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_waiting)
        self._slot_free.set()

    async def _drain(self) -> None:
        if self._waiting:
            # Never started: back at once, for other workers to take now.
            waiting = list(self._waiting)
            self._waiting.clear()
            await self.source.release(waiting)
        if self._running and not self._hard_stop:
            # The jobs in flight may finish within the grace period, unless a second
            # stop comes first.
            finished = asyncio.ensure_future(asyncio.wait([r.task for r in self._running.values()]))
            stop_now = asyncio.ensure_future(self._stop_now.wait())
            await asyncio.wait(
                [finished, stop_now],
                timeout=self.shutdown_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for waiter in (finished, stop_now):
                waiter.cancel()
        unsettled = [r for r in self._running.values() if not r.settled]
        for running in unsettled:
            running.task.cancel()
        if unsettled:
            # Returned, not failed: they run again elsewhere, attempt not counted.
            await self.source.release([r.delivery for r in unsettled])
            for running in unsettled:
                running.settled = True
                self._log.warning(
                    "job.returned",
                    job_id=running.delivery.job_id,
                    channel=running.delivery.channel,
                )
        await asyncio.gather(*(r.task for r in unsettled), return_exceptions=True)
        # Before the layer closes: a prefetched job's start mark still in flight
        # (a no-op once its outcome came first).
        await asyncio.gather(*self._marking, return_exceptions=True)

    async def _heartbeat(self) -> None:
        lease = self.settings.lease
        while True:
            await asyncio.sleep(lease / 3)
            live = [r.delivery for r in self._running.values() if not r.settled]
            live += self._waiting
            if live:
                try:
                    await self.source.extend(live, lease)
                except Exception as exc:  # a missed beat is retried; the lease is 3 beats long
                    self._log.warning("worker.heartbeat_failed", error=repr(exc))

    # --- one job ------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        event_type = str(delivery.message.get("type"))
        structlog.contextvars.bind_contextvars(
            job_id=delivery.job_id,
            channel=delivery.channel,
            attempt=delivery.attempt,
            type=event_type,
        )
        try:
            await self._handle_one(delivery, event_type)
        except asyncio.CancelledError:
            pass  # shutdown: _drain releases what was not settled
        except Exception:  # a bug of ours must not kill the loop; the lease brings it back
            self._log.exception("worker.internal_error")
        finally:
            running = self._running.pop(delivery.id, None)
            if running is not None and running.settled:
                self.processed += 1
            self._free_slot(delivery)

    def _settled(self, delivery: Delivery) -> None:
        running = self._running.get(delivery.id)
        if running is not None:
            running.settled = True

    async def _handle_one(self, delivery: Delivery, event_type: str) -> None:
        try:
            envelope, handler, argument = self._prepare(delivery)
        except _Rejected as exc:
            await self._dead(delivery, str(exc), "Rejected", str(exc))
            return
        job = JobContext(
            id=envelope.id,
            type=event_type,
            channel=delivery.channel,
            attempt=delivery.attempt,
            max_attempts=envelope.max_attempts or self.settings.max_attempts,
            notify=list(envelope.notify),
            loop=asyncio.get_running_loop(),
            reporter=self._report,
        )
        if delivery.reclaimed:
            self._log.warning("job.reclaimed")
        # One INFO line per job (job.succeeded carries queued_for and duration);
        # job.started is DEBUG so a busy worker does not pay for two lines a job.
        queued_for = _micros(clock.now() - envelope.enqueued)
        self._log.debug("job.started", queued_for=queued_for)
        if job.notify:
            await self._notify(job, "started", status="running")
        timeout = envelope.timeout or self.settings.timeout
        began = time.monotonic()
        current_job.set(job)
        try:
            result = await self._handlers.call(handler, argument, timeout)
            check_plain(result, "result")
        except Retry as request:
            await self._failed(delivery, job, "Retry", request.reason, began, delay=request.delay)
        except TimeoutError as exc:
            message = f"ran longer than its timeout of {timeout}s" if not str(exc) else str(exc)
            await self._failed(delivery, job, "TimeoutError", message, began)
        except InvalidEvent as exc:
            await self._failed(delivery, job, "InvalidResult", str(exc), began)
        except Exception as exc:
            await self._failed(delivery, job, type(exc).__name__, str(exc), began, exc=exc)
        else:
            duration = _micros(time.monotonic() - began)
            if self._early_release:
                # The ack below is sent in this step, ahead of any claim the
                # loop makes for the freed slot: Redis never sees more leases.
                self._free_slot(delivery)
            if await self.source.ack(delivery, result, self.settings.result_ttl):
                self._settled(delivery)
                self._log.info("job.succeeded", duration=duration, queued_for=queued_for)
                if job.notify:
                    await self._notify(job, "succeeded", status="succeeded", result=result)
            else:
                self._log.warning("job.lease_lost", duration=duration)

    def _prepare(self, delivery: Delivery) -> tuple[Envelope, Any, Any]:
        message = delivery.message
        try:
            envelope = read_envelope(message)
        except InvalidEvent as exc:
            raise _Rejected(f"malformed: {exc}") from exc
        if self.settings.sign and not signing.verify(message, envelope.sig):
            raise _Rejected("unsigned or bad signature: refused")
        consumer = self.routes[delivery.channel].consumer()
        consumer.scope = {"type": "channel", "channel": delivery.channel}
        consumer.channel_layer = self.layer
        consumer.channel_name = None
        try:
            if isinstance(consumer, _WorkerMixin):
                handler, argument = consumer.layerq_handler(message)
            else:
                _, handler = find_handler(consumer, message)  # plain Channels consumer
                argument = message
        except (InvalidEvent, UnknownEventType) as exc:
            raise _Rejected(f"{type(exc).__name__}: {exc}") from exc
        return envelope, handler, argument

    # --- outcomes ---------------------------------------------------------------

    async def _failed(
        self,
        delivery: Delivery,
        job: JobContext,
        error_type: str,
        message: str,
        began: float,
        *,
        delay: float | None = None,
        exc: BaseException | None = None,
    ) -> None:
        """Retry while attempts remain (reliable sources only), else dead-letter."""
        if self.source.reliable and delivery.attempt < job.max_attempts:
            await self._retry(delivery, job, delay, error_type, message, began)
        else:
            await self._bury(delivery, job, error_type, message, began, exc)

    async def _retry(
        self,
        delivery: Delivery,
        job: JobContext,
        delay: float | None,
        error_type: str,
        message: str,
        began: float,
    ) -> None:
        delay = backoff(delivery.attempt, self.settings) if delay is None else delay
        if await self.source.retry(delivery, delay, error_type, message):
            self._settled(delivery)
            self._retry_due = max(self._retry_due, time.monotonic() + delay)
            level = self._log.info if error_type == "Retry" else self._log.warning
            level(
                "job.retrying",
                delay=round(delay, 3),
                error_type=error_type,
                error=message,
                duration=_micros(time.monotonic() - began),
            )
            await self._notify(
                job, "retrying", status="retrying", error={"type": error_type, "message": message}
            )

    async def _bury(
        self,
        delivery: Delivery,
        job: JobContext,
        error_type: str,
        message: str,
        began: float,
        exc: BaseException | None,
    ) -> None:
        duration = _micros(time.monotonic() - began)
        reason = f"failed after {delivery.attempt} attempt(s): {error_type}: {message}"
        if await self.source.dead_letter(
            delivery, reason, error_type, message, self.settings.result_ttl
        ):
            self._settled(delivery)
            self._log.error(
                "job.failed",
                error_type=error_type,
                error=message,
                duration=duration,
                exc_info=exc,
            )
            await self._notify(
                job, "failed", status="failed", error={"type": error_type, "message": message}
            )

    async def _dead(self, delivery: Delivery, reason: str, error_type: str, message: str) -> None:
        if await self.source.dead_letter(
            delivery, reason, error_type, message, self.settings.result_ttl
        ):
            self._settled(delivery)
            self._log.error("job.dead", reason=reason, type=delivery.message.get("type"))

    # --- progress and notifications -------------------------------------------------

    async def _report(self, job: JobContext, fraction: float, message: str | None) -> None:
        if job.id is not None and self.source.reliable:
            await self.source.set_progress(job.id, fraction, message)
        self._log.debug("job.progress", progress=fraction, message=message)
        await self._notify(job, "progress", status="running", progress=fraction, message=message)

    async def _notify(self, job: JobContext, kind: str, **fields: Any) -> None:
        if not job.notify:
            return
        payload = {
            "id": job.id,
            "type": job.type,
            "channel": job.channel,
            "attempt": job.attempt,
            **fields,
        }
        for group in job.notify:
            try:
                await self.layer.group_send(group, job_event(kind, payload))
            except Exception as exc:  # telling browsers must never fail the job
                self._log.warning("job.notify_failed", group=group, error=repr(exc))
