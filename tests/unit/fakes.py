"""Fakes of the pipeline's ports (streams.pipeline Protocols), for unit tests.

* :class:`FakePublisher` — ``send`` returns a future the test controls: acked at
  once (``auto_ack=True``), or held until :meth:`FakePublisher.release` /
  :meth:`FakePublisher.fail`. Every send and ack is appended to a shared ``log``.
* :class:`DictDedupStore` — a dict per partition; ``mark`` records what the
  publisher still had unacknowledged at the moment it was called.
* :class:`FakeNotifier` — the SMS gateway port; raises per order id on demand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.notifier import Notification
from streams.events import OrderPaid
from streams.pipeline import Outgoing, Record

PAID_TOPIC = OrderPaid.topic()
#: A fixed "now" for Pipeline(clock=...): 2023-11-14T22:13:20Z.
NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)


@dataclass
class Meta:
    """What an ack resolves to (like aiokafka's RecordMetadata)."""

    topic: str
    partition: int | None
    offset: int


class FakePublisher:
    def __init__(self, *, auto_ack: bool = True, log: list[tuple[Any, ...]] | None = None) -> None:
        self.auto_ack = auto_ack
        self.log: list[tuple[Any, ...]] = log if log is not None else []
        self.sent: list[Outgoing] = []
        self.futures: list[asyncio.Future[Any]] = []
        #: number of upcoming sends whose ack fails (set_exception), then they succeed
        self.fail_acks = 0
        #: number of upcoming send() calls that raise before returning a future
        self.raise_on_send = 0
        self._offsets: dict[tuple[str, int | None], int] = {}

    async def send(self, message: Outgoing) -> asyncio.Future[Any]:
        if self.raise_on_send:
            self.raise_on_send -= 1
            self.log.append(("send-raised", message.topic, message.key))
            raise ConnectionError("producer cannot reach the broker")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(message)
        self.futures.append(fut)
        self.log.append(("send", message.topic, message.key))
        if self.fail_acks:
            self.fail_acks -= 1
            self.log.append(("nack", message.topic, message.key))
            fut.set_exception(ConnectionError("ack lost"))
        elif self.auto_ack:
            self._ack(message, fut)
        return fut

    def _ack(self, message: Outgoing, fut: asyncio.Future[Any]) -> None:
        tp = (message.topic, message.partition)
        offset = self._offsets.get(tp, -1) + 1
        self._offsets[tp] = offset
        self.log.append(("ack", message.topic, message.key))
        fut.set_result(Meta(message.topic, message.partition, offset))

    def pending(self) -> list[Outgoing]:
        return [m for m, f in zip(self.sent, self.futures) if not f.done()]

    def release(self, n: int | None = None) -> int:
        """Ack the first ``n`` pending sends (all when None); returns how many."""
        done = 0
        for m, f in zip(self.sent, self.futures):
            if n is not None and done >= n:
                break
            if not f.done():
                self._ack(m, f)
                done += 1
        return done

    def to(self, topic: str) -> list[Outgoing]:
        return [m for m in self.sent if m.topic == topic]


class DictDedupStore:
    """DedupStore over ``{partition: {key: event time ms}}``."""

    def __init__(self, publisher: FakePublisher | None = None,
                 data: Mapping[int, Mapping[bytes, int]] | None = None) -> None:
        self.publisher = publisher
        self.data: dict[int, dict[bytes, int]] = {p: dict(kv) for p, kv in (data or {}).items()}
        self.lookups: list[tuple[int, list[bytes]]] = []
        self.marks: list[dict[int, list[tuple[bytes, int]]]] = []
        #: per mark() call: the publisher's sends still unacknowledged at that moment
        self.pending_at_mark: list[list[Outgoing]] = []
        self.observed: list[tuple[int, int]] = []

    def lookup(self, partition: int, keys: Sequence[bytes]) -> Sequence[int | None]:
        self.lookups.append((partition, list(keys)))
        store = self.data.get(partition, {})
        return [store.get(k) for k in keys]

    async def mark(self, marks: Mapping[int, Sequence[tuple[bytes, int]]]) -> None:
        if self.publisher is not None:
            self.pending_at_mark.append(self.publisher.pending())
            self.publisher.log.append(("mark", {p: list(kv) for p, kv in marks.items()}))
        self.marks.append({p: list(kv) for p, kv in marks.items()})
        for p, kv in marks.items():
            self.data.setdefault(p, {}).update(dict(kv))

    def observe(self, partition: int, event_time_ms: int) -> None:
        self.observed.append((partition, event_time_ms))

    def marked_keys(self) -> list[bytes]:
        return [k for m in self.marks for kv in m.values() for k, _ in kv]


class FakeNotifier:
    channel = "sms"

    def __init__(self, errors: Mapping[str, BaseException] | None = None) -> None:
        self.errors = dict(errors or {})
        self.calls: list[tuple[Notification, str]] = []

    async def send(self, notification: Notification, idempotency_key: str) -> None:
        self.calls.append((notification, idempotency_key))
        exc = self.errors.get(notification.order_id)
        if exc is not None:
            raise exc

    async def close(self) -> None:
        return None

    def keys(self) -> list[str]:
        return [k for _, k in self.calls]


def paid_record(
    order_id: str,
    *,
    partition: int = 0,
    offset: int = 0,
    timestamp_ms: int = NOW_MS - 1000,
    headers: Mapping[str, bytes] | None = None,
    key: bytes | None | str = "same",
    topic: str = PAID_TOPIC,
    **fields: Any,
) -> Record:
    """A raw OrderPaid record in the contract's shape (JSON, key = order id)."""
    body = {"order_id": order_id, "user_id": "u-7", "amount": 12.5, "version": "v1", **fields}
    return Record(
        topic=topic,
        partition=partition,
        offset=offset,
        key=order_id.encode() if key == "same" else key,  # type: ignore[arg-type]
        value=json.dumps(body).encode(),
        timestamp_ms=timestamp_ms,
        headers=dict(headers or {}),
    )


async def wait_until(predicate: Any, timeout: float = 2.0) -> None:
    """Yield to the loop until ``predicate()`` is true (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0)


class Clock:
    """A settable clock: ``clock()`` returns ``clock.now``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
