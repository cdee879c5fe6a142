"""In-memory fakes of the engine's ports, for tests of the engine and of code built on it.

They import only :mod:`streams.engine` and the standard library, so a service's unit tests
(or another adapter's) use them without Faust, Kafka or the app around them. Each fake
keeps the rules of its port — the port contract tests (``tests/unit/test_*_contract.py``)
run the same tests against a fake and against the adapter the worker runs — and records
what happened, for the test to assert on.

* :class:`FakePublisher` — a :class:`~streams.engine.ports.Publisher`: each send gets
  a future the test controls — acked at once (``auto_ack=True``) or held until
  :meth:`FakePublisher.release`. Every send and ack is appended to a shared ``log``.
* :class:`MemoryStore` — a :class:`~streams.engine.ports.StateStore` over dicts;
  ``write`` sends changelog records through a publisher first (acks awaited) and
  logs what the publisher still had unacknowledged when it wrote locally.
* :class:`FakeConsumer` — the position protocol's
  :class:`~streams.engine.position.ConsumerPort`: seeks, pauses, acknowledgements and
  the generation, all recorded; a log per partition it fetches from and commits on.
* :class:`Clock` — a settable clock; :data:`NOW` a fixed "now" for it.
* :func:`wait_until` — yield to the event loop until a condition holds (with a deadline).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from streams.engine.delivery import gather_acks
from streams.engine.keys import key_partition
from streams.engine.ports import Publisher, StateStore, Writes
from streams.engine.records import TP, Ack, Outgoing, Record
from streams.engine.transactions import current

#: A fixed "now" for clocks: 2023-11-14T22:13:20Z.
NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)


class Meta:
    """What an ack's future resolves to (like aiokafka's RecordMetadata)."""

    def __init__(self, topic: str, partition: int | None, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class FakePublisher(Publisher):
    """Sends nothing anywhere: each message is kept in :attr:`sent` with its future in
    :attr:`futures`, and gets the next offset of its topic partition when acked.

    Where a message lands: its ``partition`` when the topic has it, else where its key
    hashes — for the topics whose partition count is in :attr:`partitions`; a topic not
    listed there has the message's own ``partition`` (``None`` for none), so a test that
    does not care needs no topic set-up. Like the worker's publisher, it sends a record of
    any size (the engine refuses one over :attr:`max_message_bytes` before sending it:
    :mod:`streams.engine.delivery`); :attr:`reject` makes a topic refuse every record, as a
    broker refuses a record over its limit.
    """

    def __init__(self, *, auto_ack: bool = True, log: list[tuple[Any, ...]] | None = None,
                 max_message_bytes: int = 1024 * 1024, partitions: dict[str, int] | None = None) -> None:
        self.auto_ack = auto_ack
        self.max_message_bytes = max_message_bytes
        self.log: list[tuple[Any, ...]] = log if log is not None else []
        self.sent: list[Outgoing] = []
        self.futures: list[asyncio.Future[Any]] = []
        #: topic → partition count (the topics the "broker" knows)
        self.partitions: dict[str, int] = dict(partitions or {})
        #: number of upcoming sends whose ack fails (a transient error), then they succeed
        self.fail_acks = 0
        #: number of upcoming send_many() calls that raise before enqueueing anything
        self.raise_on_send = 0
        #: topic → exception every ack to it fails with (e.g. a permanent TooLarge)
        self.reject: dict[str, BaseException] = {}
        self._offsets: dict[tuple[str, int | None], int] = {}

    async def send_many(self, messages: Sequence[Outgoing]) -> list[Ack]:
        if self.raise_on_send:
            self.raise_on_send -= 1
            self.log.append(("send-raised", len(messages)))
            raise ConnectionError("producer cannot reach the broker")
        out: list[Ack] = []
        for message in messages:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.sent.append(message)
            self.futures.append(fut)
            self.log.append(("send", message.topic, message.key))
            if message.topic in self.reject:
                fut.set_exception(self.reject[message.topic])
            elif self.fail_acks:
                self.fail_acks -= 1
                self.log.append(("nack", message.topic, message.key))
                fut.set_exception(ConnectionError("ack lost"))
            elif self.auto_ack:
                self._ack(message, fut)
            out.append((fut, 0))
        return out

    def partition_of(self, message: Outgoing) -> int | None:
        """The partition ``message`` lands on (see the class docstring)."""
        count = self.partitions.get(message.topic)
        if count is None:
            return message.partition
        if message.partition is not None and message.partition < count:
            return message.partition
        return key_partition(message.key, count)

    def _ack(self, message: Outgoing, fut: asyncio.Future[Any]) -> None:
        tp = (message.topic, self.partition_of(message))
        offset = self._offsets.get(tp, -1) + 1
        self._offsets[tp] = offset
        self.log.append(("ack", message.topic, message.key))
        fut.set_result(Meta(message.topic, tp[1], offset))

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


class MemoryStore(StateStore):
    """Tables as ``{(table, partition): {key: value}}``; changelogs through ``publisher``."""

    def __init__(self, publisher: FakePublisher | None = None, *, max_value_bytes: int = 256 * 1024) -> None:
        self.publisher = publisher
        self.max_value_bytes = max_value_bytes
        self.data: dict[tuple[str, int], dict[bytes, bytes]] = {}
        self.reads: list[tuple[str, int, list[bytes]]] = []
        #: per write(): the publisher's sends still unacknowledged when it wrote locally
        self.pending_at_write: list[list[Outgoing]] = []
        #: table partition → offset of the last changelog record written
        self.persisted: dict[tuple[str, int], int] = {}
        #: number of upcoming write() calls that fail (their changelog send failed)
        self.fail_writes = 0

    def table(self, name: str, partition: int) -> dict[bytes, bytes]:
        return self.data.setdefault((name, partition), {})

    def read(self, table: str, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        self.reads.append((table, partition, list(keys)))
        data = self.table(table, partition)
        return [data.get(k) for k in keys]

    def scan(self, table: str, partition: int, start: bytes, stop: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        data = self.table(table, partition)
        return sorted((k, v) for k, v in data.items() if start <= k < stop)[:limit]

    async def write(self, writes: Sequence[Writes]) -> None:
        if self.fail_writes:
            self.fail_writes -= 1
            raise ConnectionError("changelog ack lost")
        persisted: dict[tuple[str, int], int] = {}
        if self.publisher is not None:
            acks: list[Ack] = []
            for w in writes:
                if w.durable:
                    acks += await self.publisher.send_partition(f"{w.table}-changelog", w.partition,
                                                                list(w.durable.items()))
            results = await gather_acks(acks)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            self.pending_at_write.append(self.publisher.pending())
            self.publisher.log.append(("write", [(w.table, w.partition, sorted(w.durable)) for w in writes]))
            done = 0
            for w in writes:
                if w.durable:
                    done += len(w.durable)
                    persisted[(w.table, w.partition)] = int(results[done - 1])  # type: ignore[arg-type]

        def local() -> None:
            self.persisted.update(persisted)
            for w in writes:
                data = self.table(w.table, w.partition)
                for key, value in [*w.durable.items(), *w.local.items()]:
                    if value is None:
                        data.pop(key, None)
                    else:
                        data[key] = value

        txn = current()  # exactly-once: local state only once the transaction committed (T3)
        if txn is not None:
            txn.after_commit(local)
        else:
            local()


class FakeConsumer:
    """The driver's ConsumerPort: a generation the test moves, a record of every call, and
    a log per partition that :meth:`fetch` delivers from the consumer's position.

    ``assigned()`` is a copy (the driver may keep it while the test changes
    :attr:`owned`); ``resume`` of a partition that is not paused does nothing. A test
    that drives the driver itself (tests/unit/test_position.py) hands it fetches of its
    own and reads :attr:`seeks`, :attr:`paused` and :attr:`acks`; :meth:`append` and
    :meth:`fetch` are the consumer's side for a test of the port itself
    (tests/unit/test_consumer_contract.py)."""

    def __init__(self, assigned: set[TP] | None = None) -> None:
        self.gen = 1
        self.ready = True
        self.owned: set[TP] = set(assigned or ())
        self.seeks: list[tuple[TP, int]] = []
        self.paused: set[TP] = set()
        self.acks: list[tuple[TP, int, int]] = []
        #: topic → partition count (none known: no record is rerouted)
        self.partitions: dict[str, int] = {}
        #: what the "broker" holds per partition, and where the next fetch of each starts
        self.log: dict[TP, list[Record]] = {}
        self.positions: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}

    def generation(self) -> int:
        return self.gen

    def may_process(self) -> bool:
        return self.ready

    def assigned(self) -> set[TP]:
        return set(self.owned)

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    def pause(self, tp: TP) -> None:
        self.paused.add(tp)

    def resume(self, tp: TP) -> None:
        self.paused.discard(tp)

    def acknowledge(self, tp: TP, first: int, last: int) -> None:
        self.acks.append((tp, first, last))

    def partition_count(self, topic: str) -> int | None:
        return self.partitions.get(topic)

    def acked_offsets(self, tp: TP) -> list[int]:
        return [o for t, first, last in self.acks if t == tp for o in range(first, last + 1)]

    # -- the consumer's side: a log, fetches, commits ------------------------------------
    def append(self, tp: TP, key: bytes | None, value: bytes | None, timestamp_ms: int = 0) -> Record:
        """A record at the end of ``tp``'s log (what a producer's send would do)."""
        log = self.log.setdefault(tp, [])
        record = Record(tp.topic, tp.partition, len(log), key, value, timestamp_ms)
        log.append(record)
        return record

    def fetch(self) -> dict[TP, list[Record]]:
        """Every record past each assigned, unpaused partition's position; the positions
        move past them (as a consumer's fetch does)."""
        out: dict[TP, list[Record]] = {}
        for tp in sorted(self.owned - self.paused):
            records = self.log.get(tp, [])[self.positions.get(tp, 0):]
            if records:
                out[tp] = records
                self.positions[tp] = records[-1].offset + 1
        return out

    def commit(self) -> None:
        """Commit, per partition, the offset after the acknowledged offsets that run
        without a gap from the last commit (or from the first acknowledged one)."""
        for tp in {t for t, _, _ in self.acks}:
            done = set(self.acked_offsets(tp))
            offset = self._committed.get(tp, min(done))
            while offset in done:
                offset += 1
            self._committed[tp] = offset

    def committed(self, tp: TP) -> int | None:
        return self._committed.get(tp)


async def wait_until(predicate: Callable[[], Any], timeout: float = 2.0) -> None:
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
