"""The outbox relay: claim pending rows, publish, await acks, mark sent.

One round:

1. Claim the due head rows (oldest first, one per order; see :mod:`orders.outbox`).
   PostgreSQL: ``FOR UPDATE SKIP LOCKED`` in a transaction held until step 4, so
   several relays can run and never take the same row; a relay that dies loses its
   connection and the server rolls its claims back at once. SQLite: only the holder
   of the relay lock (:class:`RelayLock`) relays; the claim is its own short
   transaction, so the API is never blocked behind a publish.
2. Send every claimed row (``acks="all"``) with an ``event_id`` header = the row id.
3. Await every ack (at most ``RELAY_SEND_TIMEOUT``).
4. Mark the acknowledged rows ``sent``; give the others ``attempts + 1``, the error
   and ``next_retry_at`` = now + exponential backoff with jitter (due times and clock
   steps: "Time" in :mod:`orders.outbox`) — or, when waiting
   cannot help (the record is too large, the topic is invalid, the row cannot be
   encoded), ``status = 'failed'``: the row stops holding back its order.

A row that fails is one row: its error never fails the other rows of its round.
Each failed row is logged once (its first failure, or when it is given up), not on
every retry.

Risk next to step 4: a relay killed between 3 and 4 publishes those rows again
after restart — at-least-once; consumers deduplicate by the event's key.

Several batches in flight (``RELAY_IN_FLIGHT`` lanes, each a batch of at most
``RELAY_BATCH_SIZE`` rows and ``RELAY_BATCH_BYTES``). A round claims a batch, starts
sending it, and claims the next while the first one's acks are still out, up to
``RELAY_IN_FLIGHT`` batches; it ends when every batch it started is marked. The rules,
enforced in :meth:`Relay._round`, :meth:`Relay._lane` and :meth:`Relay._publish`:

1. A batch's rows are marked (sent, failed or given up) only from that batch's own
   acks, in one transaction per batch (``mark_sent_rows``: one statement per batch), after
   all of its acks are in or its time (``RELAY_SEND_TIMEOUT``) is up. A batch that
   fails never marks or fails another; a later batch acked first is marked first.
2. Order per key: a claim takes only the first pending row of each order, and a row in
   flight is still ``pending`` until its batch is marked, so no batch can carry the
   next row of an order whose row is in flight: a key's rows are never in two batches
   at once, whatever finishes first (:func:`orders.outbox.claim_batch`).
3. One relay never sends a row twice at once: a round's later claims read only rows
   past the last row its previous claim took (``position``), and every row in flight
   was claimed by this round — a round ends only once each of its batches' mark
   transactions has ended (committed or rolled back). So no claim reads a row in
   flight, nor an acked row whose mark has not committed yet. A row skipped below (not
   yet due, or held behind its order's earlier row) waits for the next round, which
   reads from the start. PostgreSQL also keeps each batch in its own transaction, its
   rows locked (``FOR UPDATE SKIP LOCKED``) until marked: other relays skip them.
4. One producer at a time: it is created under a lock (two lanes finding none create
   one, not two), and a lane that must reset it (a send error, an ack timed out)
   resets only the producer it sent with — not the new one another lane already
   sends on.
5. A send future that a producer reset cancelled, or that is still pending at its
   batch's deadline, is *not sent*: the row stays pending with a retry time. Only a
   future that resolved with a result is an ack.

The relay wakes as soon as the API commits (in-process event, or PostgreSQL
``LISTEN``) and polls every ``RELAY_POLL_INTERVAL`` as a fallback. After a round that
published rows it claims again at once: the next rows of those rows' orders are due
now (they could not be claimed beside them), and more rows may wait past the round's
batches. Only a round that published nothing waits for a wake or the poll. Beside its rounds
it refreshes the outbox gauges every ``OUTBOX_STATS_INTERVAL`` (:meth:`Relay.run_gauges`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import InvalidTopicError, MessageSizeTooLargeError, RecordTooLargeError

from orders import outbox
from orders.db import Database
from orders.metrics import OrdersMetrics
from orders.settings import OrdersSettings
from streams.events import EVENT_BY_TOPIC, EVENT_TYPES

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "order_streams_outbox"

#: Errors of one row that no wait can fix: the record is larger than the producer or
#: the broker accepts, the topic name is invalid, the key/value/headers are not bytes
#: (TypeError) or cannot be encoded (ValueError, UnicodeError). The row is given up.
TERMINAL_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError, RecordTooLargeError, InvalidTopicError, TypeError, ValueError,
)


class RelayLock:
    """Which relay publishes on SQLite: an exclusive ``flock`` on ``<database>.relay-lock``.

    The rule: a SQLite relay claims and publishes only while it holds this lock, and
    holds it from its first successful try until it exits. The kernel releases the
    lock the moment the holder's process dies (SIGKILL included), so a waiting or a
    restarted relay takes over at its next round (``RELAY_POLL_INTERVAL``, 1 s) — no
    lease has to expire. And the kernel never releases it while the holder lives:
    a paused (SIGSTOP) or slow relay keeps it, so no second relay can believe it holds
    it too and publish the same rows — which a time-limited lease cannot promise,
    since its holder cannot tell that it was paused past the expiry between its check
    and its send. The cost: a holder that is alive but stuck stops publishing until it
    is restarted (``outbox_oldest_pending_age_seconds`` grows; ``/health`` says
    ``lease``). SQLite already requires every process to share one local file system
    with working locks; this lock needs nothing more.
    """

    def __init__(self, path: str, holder: str) -> None:
        self.path = path
        self.holder = holder
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True while this object holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        # For an operator's eyes only (the lock, not the text, decides).
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.holder} pid {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


class SendCancelled(Exception):
    """The send's future was cancelled before an ack (a producer reset): not sent."""


class RowUnreadable(ValueError):
    """The stored row cannot be turned into a record (see ``OutboxRow.error``)."""


def is_terminal(error: BaseException) -> bool:
    return isinstance(error, TERMINAL_ERRORS)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Relay:
    def __init__(
        self,
        db: Database,
        settings: OrdersSettings,
        metrics: OrdersMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.locking = db.dialect == "postgresql"
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._topics_ready = False
        self._last_cleanup = 0.0
        self.published_total = 0
        self.given_up_total = 0
        #: the last round ran to its end (its rows may still have failed)
        self.round_ok = True
        #: the error that kept the producer from starting, while it lasts (logged once)
        self._producer_down: str | None = None
        #: SQLite: the lock that makes this relay the one that publishes
        self.lock = None if self.locking else RelayLock(f"{getattr(db, 'path', 'orders.db')}.relay-lock",
                                                        settings.relay_id)
        self._waiting_logged = False

    def notify(self) -> None:
        """Called after a commit that added outbox rows: relay now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        listener = asyncio.ensure_future(self._listen()) if self.locking else None
        gauges = asyncio.ensure_future(self.run_gauges())
        try:
            while True:
                try:
                    published = await self.round()
                    await self._housekeeping()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # broker or database trouble: wait, then try again
                    if self.round_ok:  # once per outage, not once per round
                        log.warning("relay round failed, retrying every %ss: %s",
                                    self.settings.relay_backoff_base, describe(exc))
                    self.round_ok = False
                    await self._reset_producer()
                    published = 0
                    await asyncio.sleep(self.settings.relay_backoff_base)
                if not published:  # after rows went out, claim again at once (docstring)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.relay_poll_interval)
                    self._wake.clear()
        finally:
            gauges.cancel()
            if listener:
                listener.cancel()
            await self._reset_producer()
            if self.lock is not None:
                self.lock.release()
            log.info("relay %s: published %d rows", self.settings.relay_id, self.published_total)

    async def round(self) -> int:
        """One claim → publish → mark cycle; returns rows published."""
        published = await self._round()
        if not self.round_ok:
            log.info("relay: rounds succeed again")
            self.round_ok = True
        return published

    async def _round(self) -> int:
        s = self.settings
        if self.lock is not None and not self.lock.held:
            if not await asyncio.to_thread(self.lock.try_acquire):
                if not self._waiting_logged:
                    log.info("relay %s: another relay holds %s; waiting to take over", s.relay_id, self.lock.path)
                    self._waiting_logged = True
                return 0
            # A takeover is news; the first start's lock is part of "ready".
            log.log(logging.INFO if self._waiting_logged else logging.DEBUG,
                    "relay %s: holds %s; publishing", s.relay_id, self.lock.path)
        loop = asyncio.get_running_loop()
        lanes: list[asyncio.Future[int]] = []
        after: int | None = None
        try:
            for _ in range(s.relay_in_flight):
                claimed: asyncio.Future[int | None] = loop.create_future()
                lane = asyncio.ensure_future(self._lane(claimed, after))
                lanes.append(lane)
                # The next claim starts once this one is over, reading past its last row
                # (rule 3).
                await asyncio.wait((claimed, lane), return_when=asyncio.FIRST_COMPLETED)
                after = claimed.result() if claimed.done() else None
                if after is None:
                    break
            results = await asyncio.gather(*lanes, return_exceptions=True)
        except BaseException:
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            raise
        published = 0
        for r in results:
            if isinstance(r, BaseException):
                raise r
            published += r
        return published

    async def _lane(self, claimed: asyncio.Future[int | None], after: int | None) -> int:
        """One batch: claim the due rows past ``after`` (then tell the round the last
        one's position, or None when no more rows are due), publish, mark. Rules 1–3 in the
        module docstring."""
        s, now = self.settings, self.clock()
        if self.lock is not None:  # SQLite: the claim is its own short transaction
            async with self.db.transaction() as tx:
                rows, more = await outbox.claim_batch(
                    tx, now=now, limit=s.relay_batch_size, skip_locked=False, max_delay=s.relay_backoff_max,
                    max_bytes=s.relay_batch_bytes, after=after)
            claimed.set_result(rows[-1].position if more and rows else None)
            if not rows:
                return 0
            results = await self._publish(rows)
            async with self.db.transaction() as tx:
                return await self._mark(tx, rows, results)
        async with self.db.transaction() as tx:  # PostgreSQL: locked until marked
            rows, more = await outbox.claim_batch(
                tx, now=now, limit=s.relay_batch_size, skip_locked=True, max_delay=s.relay_backoff_max,
                max_bytes=s.relay_batch_bytes, after=after)
            claimed.set_result(rows[-1].position if more and rows else None)
            if not rows:
                return 0
            results = await self._publish(rows)
            return await self._mark(tx, rows, results)

    async def _mark(self, tx: Any, rows: list[outbox.OutboxRow], results: list[Failure | None]) -> int:
        now = self.clock()
        ok = [r for r, f in zip(rows, results) if f is None]
        await outbox.mark_sent_rows(tx, ok, now=now)
        given_up = 0
        for row, failure in zip(rows, results):
            if failure is None:
                if row.attempts:
                    log.info("relay: row published after %d failed attempts", row.attempts,
                             extra=self._fields(row))
                continue
            reason = describe(failure.error)
            if failure.terminal:
                given_up += 1
                await outbox.mark_given_up(tx, row, reason, now=now)
                log.error("relay: gave up on a row that can never be published (status failed): %s", reason,
                          extra=self._fields(row, attempts=row.attempts + 1))
                continue
            delay = outbox.backoff(row.attempts + 1, base=self.settings.relay_backoff_base,
                                   cap=self.settings.relay_backoff_max)
            await outbox.mark_failed(tx, row, reason, now=now, delay=delay)
            if row.attempts == 0 and not failure.producer_down:  # once per row, not per retry
                log.warning("relay: row failed to publish, retrying with backoff: %s", reason,
                            extra=self._fields(row))
        self.metrics.published.inc(len(ok))
        self.published_total += len(ok)
        self.given_up_total += given_up
        if len(ok) < len(rows):
            self.metrics.failed.inc(len(rows) - len(ok))
            log.debug("relay: %d of %d rows failed to publish (%d given up)", len(rows) - len(ok), len(rows),
                      given_up)
        return len(ok)

    @staticmethod
    def _fields(row: outbox.OutboxRow, **more: Any) -> dict[str, Any]:
        event_type = EVENT_BY_TOPIC.get(row.topic)
        return {"order_id": row.aggregate_id, "event_id": row.id, "topic": row.topic,
                "event_type": event_type.type_name() if event_type else None, **more}

    async def _publish(self, rows: list[outbox.OutboxRow]) -> list[Failure | None]:
        """Send every row, await the acks together; one result per row (None: acked)."""
        results: list[Failure | None] = [None] * len(rows)
        sendable: list[int] = []
        for i, row in enumerate(rows):
            if row.error is not None:
                results[i] = Failure(RowUnreadable(row.error), terminal=True)
            else:
                sendable.append(i)
        if not sendable:
            return results
        try:
            producer = await self._ensure_producer()
        except Exception as exc:  # no broker: every row waits, however it looks
            if self._producer_down is None:
                log.warning("relay: cannot reach the broker (%s); %d rows wait, retried with backoff",
                            describe(exc), len(sendable))
            self._producer_down = describe(exc)
            for i in sendable:
                results[i] = Failure(exc, terminal=False, producer_down=True)
            return results
        if self._producer_down is not None:
            log.info("relay: broker reachable again")
            self._producer_down = None

        # Enqueue every row, then wait for the acks together: no task per row. An
        # error raised by send() belongs to its row only; the others go on.
        timeout = self.settings.relay_send_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        futures: dict[int, Any] = {}
        reset = False
        not_sent = TimeoutError(f"no broker ack in {timeout}s")
        try:
            async with asyncio.timeout(timeout):  # send() blocks while the broker is unreachable
                for i in sendable:
                    row = rows[i]
                    headers = [("event_id", row.id.encode()), *row.headers]
                    try:
                        futures[i] = await producer.send(row.topic, key=row.key, value=row.payload,
                                                         headers=headers)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        results[i] = Failure(exc, terminal=is_terminal(exc))
                        reset = reset or not is_terminal(exc)
        except TimeoutError:
            reset = True
        # Wait for the first future not yet done, then the next: the acks of a broker
        # batch resolve together, so this waits a few times per batch, not once per row.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                for f in futures.values():
                    if not f.done():
                        await asyncio.wait((f,))
        pending = {f for f in futures.values() if not f.done()}
        for i in sendable:
            if results[i] is not None:
                continue
            f = futures.get(i)
            if f is None:  # the round's time ran out before this row was enqueued
                results[i] = Failure(not_sent, terminal=False)
            elif f in pending:
                f.cancel()
                results[i] = Failure(not_sent, terminal=False)
            elif f.cancelled():  # rule 5: a producer reset dropped it
                results[i] = Failure(SendCancelled("the send was cancelled (producer reset)"), terminal=False)
            elif (exc := f.exception()) is not None:
                results[i] = Failure(exc, terminal=is_terminal(exc))
        if pending or reset:
            await self._reset_producer(producer)
        return results

    async def _ensure_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:  # rule 4: lanes that find none create one
            return await self._start_producer()

    async def _start_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            timeout_ms = int(self.settings.relay_send_timeout * 1000)
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap, acks="all", linger_ms=2,
                request_timeout_ms=timeout_ms, max_batch_size=256 * 1024,
                max_request_size=self.settings.relay_max_request_bytes,
                **self.settings.aiokafka_kwargs(),
            )
            try:
                await asyncio.wait_for(producer.start(), self.settings.relay_send_timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        if not self._topics_ready:
            await self._create_topics()
        return self._producer

    async def _create_topics(self) -> None:
        """Create the event topics with the project's partition count (existing ones stay)."""
        s = self.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap, request_timeout_ms=10000,
                                    **s.aiokafka_kwargs())
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            new = [NewTopic(t.topic(), s.topic_partitions, s.topic_replication_factor)
                   for t in EVENT_TYPES if t.topic() not in existing]
            if new:
                with contextlib.suppress(Exception):  # a concurrent creator won the race
                    await admin.create_topics(new)
            self._topics_ready = True
        finally:
            await admin.close()

    async def _reset_producer(self, used: AIOKafkaProducer | None = None) -> None:
        """Stop the producer (the next send starts another). ``used``: reset only if it is
        still the current one — a lane resets the producer it sent with (rule 4)."""
        if used is not None and used is not self._producer:
            return
        # After a broker loss the topics may be gone too (the embedded broker keeps
        # them in memory, and acknowledged sends to a missing topic): create them again.
        self._topics_ready = False
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def _housekeeping(self) -> None:
        now = self.clock()
        if now - self._last_cleanup >= 60.0:
            self._last_cleanup = now
            removed, chunk = 0, outbox.DELETE_CHUNK
            while True:  # one short transaction per chunk (outbox.DELETE_CHUNK)
                async with self.db.transaction() as tx:
                    n = await outbox.delete_sent_before(tx, now - self.settings.outbox_retention, limit=chunk)
                removed += n
                if n < chunk:
                    break
            if removed:
                log.info("relay: deleted %d sent rows older than %ss", removed, self.settings.outbox_retention)

    async def refresh_gauges(self) -> outbox.OutboxStats:
        """Read the outbox counts and set the gauges (pending, oldest age, given up); the
        sent rows are not counted (``sent`` is 0): the timer must not read the retention's rows."""
        async with self.db.transaction() as tx:
            st = await outbox.stats(tx, now=self.clock(), count_sent=False)
        self.metrics.set_outbox(st.pending, st.oldest_pending_age_seconds, st.failed_terminal)
        return st

    async def run_gauges(self) -> None:
        """Refresh the gauges every ``OUTBOX_STATS_INTERVAL``, whether or not anyone asks
        and however long a round takes."""
        failing = False
        while True:
            try:
                await self.refresh_gauges()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("relay: cannot read the outbox stats (%s)", describe(exc))
                failing = True
            await asyncio.sleep(self.settings.outbox_stats_interval)

    async def _listen(self) -> None:
        """PostgreSQL: wake on ``NOTIFY order_streams_outbox`` from any process."""
        import psycopg

        url = getattr(self.db, "url", "")
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("relay: LISTEN connection lost (%r); polling meanwhile", exc)
                await asyncio.sleep(1.0)


class Failure:
    """Why one row was not published, and whether waiting could ever help."""

    __slots__ = ("error", "terminal", "producer_down")

    def __init__(self, error: BaseException, *, terminal: bool, producer_down: bool = False) -> None:
        self.error = error
        self.terminal = terminal
        self.producer_down = producer_down


def relay_app(relay: Relay) -> web.Application:
    """``python -m orders relay``'s HTTP face: ``/metrics`` and ``/health``."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=relay.metrics.exposition(), content_type="text/plain")

    async def health(request: web.Request) -> web.Response:
        lease = "rows" if relay.lock is None else ("held" if relay.lock.held else "waiting")
        return web.json_response({"status": "ok", "relay_id": relay.settings.relay_id, "lease": lease,
                                  "broker": "down" if relay._producer_down else "ok",
                                  "last_round_ok": relay.round_ok})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    return app
