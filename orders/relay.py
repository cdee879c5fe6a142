"""The outbox relay: claim pending rows, publish, await acks, mark sent.

One round:

1. Claim the due head rows (oldest first, one per order; see :mod:`orders.outbox`).
   PostgreSQL: ``FOR UPDATE SKIP LOCKED`` in a transaction held until step 4, so
   several relays can run and never take the same row. SQLite: only the holder of
   the ``relay_lease`` row relays; the claim is its own short transaction, so the
   API is never blocked behind a publish.
2. Send every claimed row (``acks="all"``) with an ``event_id`` header = the row id.
3. Await every ack (at most ``RELAY_SEND_TIMEOUT``).
4. Mark the acknowledged rows ``sent``; give the others ``attempts + 1``, the error
   and ``next_retry_at`` = now + exponential backoff with jitter.

Risk next to step 4: a relay killed between 3 and 4 publishes those rows again
after restart — at-least-once; consumers deduplicate by the event's key.
The relay wakes as soon as the API commits (in-process event, or PostgreSQL
``LISTEN``) and polls every ``RELAY_POLL_INTERVAL`` as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from orders import outbox
from orders.db import Database
from orders.metrics import OrdersMetrics
from orders.settings import OrdersSettings
from streams.events import EVENT_TYPES

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "order_streams_outbox"
LEASE = "outbox-relay"


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
        self._topics_ready = False
        self._last_cleanup = 0.0
        self._last_stats = 0.0
        self.published_total = 0
        #: until when this relay's SQLite lease is known to be held (clock seconds)
        self._lease_until = 0.0

    def notify(self) -> None:
        """Called after a commit that added outbox rows: relay now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        listener = asyncio.ensure_future(self._listen()) if self.locking else None
        try:
            while True:
                try:
                    published = await self.round()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # broker or database trouble: wait, then try again
                    log.warning("relay round failed: %r", exc)
                    await self._reset_producer()
                    published = 0
                    await asyncio.sleep(self.settings.relay_backoff_base)
                await self._housekeeping()
                if published < self.settings.relay_batch_size:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.relay_poll_interval)
                    self._wake.clear()
        finally:
            if listener:
                listener.cancel()
            await self._reset_producer()
            log.info("relay %s: published %d rows", self.settings.relay_id, self.published_total)

    async def round(self) -> int:
        """One claim → publish → mark cycle; returns rows published."""
        s, now = self.settings, self.clock()
        if not self.locking:
            async with self.db.transaction() as tx:
                # Renew the lease only when half of it is used up: a renewal is a write,
                # and every write commit costs an fsync (synchronous=FULL); the claim
                # alone is read-only.
                if now >= self._lease_until - s.relay_lease_ttl / 2:
                    if not await outbox.try_lease(tx, LEASE, s.relay_id, now=now, ttl=s.relay_lease_ttl):
                        self._lease_until = 0.0
                        return 0
                    self._lease_until = now + s.relay_lease_ttl
                rows = await outbox.claim(tx, now=now, limit=s.relay_batch_size, skip_locked=False)
            if not rows:
                return 0
            results = await self._publish(rows)
            async with self.db.transaction() as tx:
                return await self._mark(tx, rows, results)
        async with self.db.transaction() as tx:
            rows = await outbox.claim(tx, now=now, limit=s.relay_batch_size, skip_locked=True)
            if not rows:
                return 0
            results = await self._publish(rows)
            return await self._mark(tx, rows, results)

    async def _mark(self, tx: Any, rows: list[outbox.OutboxRow], results: list[BaseException | None]) -> int:
        now = self.clock()
        ok = [r.id for r, err in zip(rows, results) if err is None]
        await outbox.mark_sent(tx, ok, now=now)
        for row, err in zip(rows, results):
            if err is not None:
                delay = outbox.backoff(row.attempts + 1, base=self.settings.relay_backoff_base,
                                       cap=self.settings.relay_backoff_max)
                await outbox.mark_failed(tx, row, f"{type(err).__name__}: {err}", now=now, delay=delay)
        self.metrics.published.inc(len(ok))
        self.published_total += len(ok)
        if len(ok) < len(rows):
            self.metrics.failed.inc(len(rows) - len(ok))
            log.warning("relay: %d of %d rows failed to publish", len(rows) - len(ok), len(rows))
        return len(ok)

    async def _publish(self, rows: list[outbox.OutboxRow]) -> list[BaseException | None]:
        try:
            producer = await self._ensure_producer()
        except Exception as exc:
            return [exc] * len(rows)

        # Enqueue every row, then wait for the acks together: no task per row.
        timeout = self.settings.relay_send_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        futures: list[Any] = []
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(timeout):  # send() blocks while the broker is unreachable
                for row in rows:
                    headers = [("event_id", row.id.encode()), *row.headers]
                    futures.append(await producer.send(row.topic, key=row.key, value=row.payload, headers=headers))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            failure = exc if not isinstance(exc, TimeoutError) else TimeoutError(f"no broker ack in {timeout}s")
        pending: set[Any] = set()
        if futures:
            _, pending = await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0.001))
        results: list[BaseException | None] = []
        for f in futures:
            if f in pending:
                f.cancel()
                results.append(TimeoutError(f"no broker ack in {timeout}s"))
            else:
                results.append(f.exception())
        results += [failure or TimeoutError("not sent")] * (len(rows) - len(futures))
        if pending or failure is not None:
            await self._reset_producer()
        return results

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            timeout_ms = int(self.settings.relay_send_timeout * 1000)
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap, acks="all", linger_ms=2,
                request_timeout_ms=timeout_ms, max_batch_size=256 * 1024,
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

    async def _reset_producer(self) -> None:
        # After a broker loss the topics may be gone too (the embedded broker keeps
        # them in memory, and acknowledged sends to a missing topic): create them again.
        self._topics_ready = False
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def _housekeeping(self) -> None:
        now = self.clock()
        if now - self._last_stats >= 1.0:
            self._last_stats = now
            async with self.db.transaction() as tx:
                st = await outbox.stats(tx, now=now)
            self.metrics.pending.set(st.pending)
            self.metrics.oldest_age.set(st.oldest_pending_age_seconds)
        if now - self._last_cleanup >= 60.0:
            self._last_cleanup = now
            async with self.db.transaction() as tx:
                removed = await outbox.delete_sent_before(tx, now - self.settings.outbox_retention)
            if removed:
                log.info("relay: deleted %d sent rows older than %ss", removed, self.settings.outbox_retention)

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
