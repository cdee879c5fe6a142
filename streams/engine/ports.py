"""What the engine needs from the outside, as ports the adapters and the test fakes
subclass: a :class:`Publisher`, a :class:`StateStore` (read, scan, write), and the
per-batch, per-partition :class:`Transaction` every service uses for its state.

One state port for every table — dedup markers, order states, stock — so the commit
protocol's last step (step 5 in streams/engine/pipeline.py, where the protocol is
written) is the same for all of them: :meth:`StateStore.write`, whose docstring below
is the store's contract, checked against every store by
tests/unit/test_state_store_contract.py.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from streams.engine.errors import TooLarge
from streams.engine.records import Ack, Outgoing


class Publisher(abc.ABC):
    """Sends records to the broker, a batch at a time."""

    #: the largest record (key + value + headers) the producer accepts
    max_message_bytes: int = 1024 * 1024

    @abc.abstractmethod
    async def send_many(self, messages: Sequence[Outgoing]) -> list[Ack]:
        """Enqueue every message, in order per topic partition — to its ``partition``
        if the topic has it, else where its key hashes; return one
        :data:`~streams.engine.records.Ack` per message. An ack that can never
        succeed raises :class:`TooLarge`, :class:`UnknownDestination` or
        :class:`Unserializable`; any other exception is taken as transient.

        Raising here (rather than in an ack) means nothing was enqueued."""

    async def send_partition(self, topic: str, partition: int,
                             records: Sequence[tuple[bytes, bytes | None]]) -> list[Ack]:
        """Enqueue ``(key, value)`` records to one partition, in order (a table's
        changelog writes); same acks as :meth:`send_many`."""
        return await self.send_many([Outgoing(topic, k, v, (), partition) for k, v in records])


class Writes(NamedTuple):
    """A transaction's writes to one table partition: ``durable`` ones go to the
    changelog and the local store; ``local`` ones (a derived index the recovery
    rebuilds) to the local store only."""

    table: str
    partition: int
    durable: dict[bytes, bytes | None]
    local: dict[bytes, bytes | None]


class StateStore(abc.ABC):
    """Tables of bytes, partitioned like the service's source topics: the state for a
    record of partition ``p`` lives in partition ``p`` of the table."""

    #: the largest value one key may hold; a larger one fails its event (``too_large``)
    max_value_bytes: int = 256 * 1024

    @abc.abstractmethod
    def read(self, table: str, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """Current values of ``keys`` (one multi-get)."""

    @abc.abstractmethod
    def scan(self, table: str, partition: int, start: bytes, stop: bytes,
             limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, value) pairs with ``start <= key < stop``, in key order."""

    @abc.abstractmethod
    async def write(self, writes: Sequence[Writes]) -> None:
        """Make ``writes`` durable: 1. a changelog record per durable write, every ack
        awaited; 2. one local write batch per table partition (durable and local
        writes); 3. each partition's persisted changelog offset set to the offset of
        the *last* record written (so recovery starts right after it). Raises if a
        changelog send failed (nothing local was written then)."""


#: Time-index keys: ``INDEX_PREFIX + due time (8 bytes, big-endian ms) + key``. Ids are
#: validated to start with a letter or digit, so no user key starts with ``\x00``.
INDEX_PREFIX = b"\x00t"


@dataclass(frozen=True)
class Indexer:
    """How a table's local index entries (:data:`INDEX_PREFIX` keys) derive from its values.

    Index entries are written beside each value and never to the changelog, so whatever
    rebuilds a table from its changelog (the bulk loader, Faust's own replay, a standby)
    derives them again with this: ``one(key, value)`` per record, or ``many(records)`` for
    a whole fetch of changelog records (``.key``, ``.value``; tombstones skipped) at once."""

    one: Callable[[bytes, bytes], Iterable[bytes]]
    many: Callable[[Sequence[Any]], Iterable[bytes]] | None = None

    def __call__(self, key: bytes, value: bytes) -> Iterable[bytes]:
        return self.one(key, value)

    def of_records(self, records: Sequence[Any]) -> Iterable[bytes]:
        if self.many is not None:
            return self.many(records)
        return [i for r in records if r.value is not None for i in self.one(r.key, r.value)]


def index_key(at_ms: int, key: bytes) -> bytes:
    return INDEX_PREFIX + max(0, at_ms).to_bytes(8, "big") + key


def parse_index_key(raw: bytes) -> tuple[int, bytes]:
    return int.from_bytes(raw[2:10], "big"), raw[10:]


class TransactionClosed(RuntimeError):
    """A write to a transaction (or a new transaction) of a batch whose state is
    flushed or being flushed: it would never be written, so it is refused."""


class Transaction:
    """A batch's view of one table partition: reads see the batch's own writes;
    nothing is written until the batch's state is flushed (the commit protocol's
    step 5, streams/engine/pipeline.py). From the flush on it refuses writes
    (:class:`TransactionClosed`): a write then — by a handler that kept the
    transaction past its batch, or during the flush's own sends — would be lost or
    half-written, never an error anyone sees.

    ``schedule(at_ms, key)`` keeps a time index beside the table (same partition,
    same changelog), so work that falls due — TTL expiry, parked-event timeouts —
    is found by a range scan over what is due, not by reading the table.
    """

    __slots__ = ("store", "table", "partition", "_cache", "_writes", "_local", "closed")

    def __init__(self, store: StateStore, table: str, partition: int) -> None:
        self.store = store
        self.table = table
        self.partition = partition
        self._cache: dict[bytes, bytes | None] = {}
        self._writes: dict[bytes, bytes | None] = {}
        self._local: dict[bytes, bytes | None] = {}
        #: set when the batch's flush begins: every write is refused from then on
        self.closed = False

    def _refuse(self) -> None:
        raise TransactionClosed(f"{self.table}[{self.partition}]: a write after the batch's state "
                                "was flushed would never be written")

    def get_many(self, keys: Iterable[bytes]) -> list[bytes | None]:
        keys = list(keys)
        missing = [k for k in dict.fromkeys(keys) if k not in self._writes and k not in self._cache]
        if missing:
            for k, v in zip(missing, self.store.read(self.table, self.partition, missing)):
                self._cache[k] = v
        return [self._writes[k] if k in self._writes else self._cache[k] for k in keys]

    def get(self, key: bytes) -> bytes | None:
        writes = self._writes
        if key in writes:
            return writes[key]
        cache = self._cache
        if key in cache:
            return cache[key]
        value = cache[key] = self.store.read(self.table, self.partition, [key])[0]
        return value

    def set(self, key: bytes, value: bytes) -> None:
        if self.closed:
            self._refuse()
        limit = self.store.max_value_bytes
        if len(value) > limit:
            raise TooLarge(f"{self.table} value for {key[:64]!r} would be {len(value)} bytes (limit {limit})")
        self._writes[key] = value

    def delete(self, key: bytes) -> None:
        if self.closed:
            self._refuse()
        self._writes[key] = None

    def schedule(self, at_ms: int, key: bytes, *, durable: bool = True) -> None:
        """Put ``key`` on the time index at ``at_ms`` (its event's time: the caller
        asks :meth:`due` for what is older than a cutoff, so a changed TTL or timeout
        applies to entries already there). A
        ``durable=False`` entry is written locally only: for an index the table's
        recovery rebuilds from the values (one changelog record less per write)."""
        if self.closed:
            self._refuse()
        (self._writes if durable else self._local)[index_key(at_ms, key)] = b"1"

    def unschedule(self, at_ms: int, key: bytes) -> None:
        """Remove an index entry (a tombstone in the changelog too, which is harmless
        for an entry that was only local)."""
        if self.closed:
            self._refuse()
        self._writes[index_key(at_ms, key)] = None

    def due(self, until_ms: int, limit: int) -> list[tuple[int, bytes]]:
        """Index entries at or before ``until_ms`` (oldest first), without the ones
        this batch already removed."""
        stop = index_key(until_ms + 1, b"")
        rows = self.store.scan(self.table, self.partition, INDEX_PREFIX, stop, limit)
        return [parse_index_key(k) for k, _ in rows if self._writes.get(k, b"1") is not None]

    def writes(self) -> Writes:
        return Writes(self.table, self.partition, self._writes, self._local)


class BatchState:
    """Every transaction a batch opened, flushed together. Once :meth:`flush` began,
    its transactions refuse writes and no new one is opened (:class:`TransactionClosed`);
    a flush that raised may be called again and writes the same writes again."""

    __slots__ = ("store", "_txs", "_flushed")

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._txs: dict[tuple[str, int], Transaction] = {}
        self._flushed = False

    def tx(self, table: str, partition: int) -> Transaction:
        found = self._txs.get((table, partition))
        if found is None:
            if self._flushed:
                raise TransactionClosed(f"{table}[{partition}]: a transaction opened after the batch's "
                                        "state was flushed would never be written")
            found = self._txs[(table, partition)] = Transaction(self.store, table, partition)
        return found

    async def flush(self) -> int:
        self._flushed = True
        for tx in self._txs.values():
            tx.closed = True
        writes = [tx.writes() for tx in self._txs.values() if tx._writes or tx._local]
        if writes:
            await self.store.write(writes)
        self._txs.clear()
        return sum(len(w.durable) + len(w.local) for w in writes)
