"""Every private name of faust-streaming 0.15.3 and aiokafka 0.14.0 the worker uses.

Both versions are pinned in pyproject.toml. Each name below is checked by
tests/unit/test_faust_compat.py (it exists and does what we rely on), so an
upgrade that renames or changes one fails there, not silently in production
(offsets that stop committing, a recovery that reads nothing).

What the worker leans on, and why:

- **the consumer** — :class:`streams.faust.consumer.EngineConsumer` (on
  :func:`faust_consumer_class`) replaces Faust's per-message path for
  the engine's topics: ``Consumer._wait_next_records`` (where a fetch arrives from
  the consumer thread), ``perform_seek``/``seek_to_committed`` (the seek after
  table recovery), ``wait_empty`` (a rebalance waits for in-flight work),
  ``highwaters`` (recovery's first call: the bulk loader runs there, and moves the
  recovery's ``active_offsets``/``standby_offsets``), and the
  offset bookkeeping Faust commits from: ``_acked``, ``_acked_index``,
  ``_n_acked``, ``_committed_offset``, ``_read_offset``, ``_commit_every``;
- **the consumer thread** — ``AIOKafkaConsumerThread._create_consumer`` (to set the
  fetch wait, aiokafka's ``_fetch_max_wait_ms``) and ``_highwaters`` (end offsets
  taken from a Fetch's high watermark on the embedded broker), chosen by
  ``Consumer._new_consumer_thread`` — subclasses for this app, no class patches;
- **the producer** — ``Producer._ensure_producer`` (the aiokafka producer, for
  record batches, and its client for :func:`broker_round_trip`, the health probe);
- **the stores** — ``Store._db_for_partition`` and ``Store._dbs`` (per-partition
  rocksdict handles), ``Store.offset_key``, and ``Store.apply_changelog_batch``
  (:class:`EngineStore` writes the engine's index entries for what Faust applies);
- **clients** — aiokafka's ``_client`` of a consumer (metadata refresh, raw Fetch),
  its ``_subscription`` (the fetch position, for ``consumer_lag``) and Faust's
  ``_thread``/``_consumer`` that hold it;
- **the record reader** — ``aiokafka.consumer.fetcher.MemoryRecords`` (replaced by
  :class:`TolerantMemoryRecords`, see :func:`read_any_header_key`), the pure-Python
  ``_DefaultRecordBatchPy`` (its header and decompression) and ``_DefaultRecordPy``;
- **the CLI** — ``faust.cli.base._apply_options`` (a command's options applied to
  its click command, as Faust's own commands get them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import rocksdict
from aiokafka import TopicPartition
from aiokafka.protocol.fetch import FetchRequest

from streams.engine.records import Record

log = logging.getLogger(__name__)

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


# -- producer --------------------------------------------------------------------------


def aiokafka_producer(app: Any) -> Any:
    """The app's ``AIOKafkaProducer`` (Faust ``Producer._ensure_producer``)."""
    return app.producer._ensure_producer()


async def broker_round_trip(app: Any, topics: Sequence[str] = ()) -> list[tuple[str, int]]:
    """One request a broker must answer: Metadata for ``topics`` (the worker's own; no
    topic is created by it) through the app's producer client (the consumer's runs on
    Faust's consumer thread), to each known broker in turn until one answers. Returns
    the partitions of ``topics`` that have no leader (:func:`leaderless`); raises if no
    broker answered or the producer is not started. Bound it with a timeout: a frozen
    broker never answers."""
    from aiokafka.errors import KafkaConnectionError
    from aiokafka.protocol.metadata import MetadataRequest

    client = aiokafka_producer(app).client
    nodes = [b.nodeId for b in client.cluster.brokers()]
    if not nodes:
        raise KafkaConnectionError("no broker known yet (not bootstrapped)")
    error: BaseException | None = None
    for node in nodes:
        try:
            response = await client.send(node, MetadataRequest(list(topics), allow_auto_topic_creation=False))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
        else:
            return leaderless(response)
    assert error is not None
    raise error


def leaderless(response: Any) -> list[tuple[str, int]]:
    """The partitions a Metadata response lists without a leader: leader -1, or a
    partition error (``LEADER_NOT_AVAILABLE`` while an election runs, a replica that
    is offline). Topics the response does not know (not created yet) are not counted.
    The tuple layout is aiokafka's (``ClusterMetadata.update_metadata`` reads it so)."""
    out: list[tuple[str, int]] = []
    for topic_data in getattr(response, "topics", None) or ():
        if response.API_VERSION == 0:
            error_code, topic, partitions = topic_data
        else:
            error_code, topic, _internal, partitions = topic_data[:4]
        if error_code == 3:  # UNKNOWN_TOPIC_OR_PARTITION: not there yet
            continue
        for p_error, partition, leader, *_ in partitions:
            if p_error != 0 or leader < 0:
                out.append((topic, int(partition)))
    return sorted(out)


# -- stores ----------------------------------------------------------------------------


def partition_db(table: Any, partition: int) -> Any:
    """The rocksdict handle of one table partition (opened on first use)."""
    return table.data._db_for_partition(partition)


def reopen_partition_db(table: Any, partition: int) -> None:
    """Closes one table partition's rocksdict handle and forgets it (Faust's
    ``Store._dbs``); the next use opens it again (``Store._db_for_partition``).

    Why: RocksDB keeps a write error — a full disk — for the life of an open handle
    (its "background error"): every later write fails with the same "No space left on
    device" after space came back (docs/design-notes.md, "The state store's offset").
    A fresh handle replays its write-ahead log and writes again. Closing first: the
    directory's lock is held until the old handle is closed."""
    db = table.data._dbs.pop(partition, None)
    if db is not None:
        try:
            db.close()
        except Exception as exc:  # a handle in error may fail to flush on close: reopen anyway
            log.warning("closing %s[%d] after a write error: %r", changelog_topic(table), partition, exc)


def open_partitions(table: Any) -> dict[int, Any]:
    """Partition → rocksdict handle, for the partitions this worker has open."""
    return dict(table.data._dbs)


def offset_key(table: Any) -> bytes:
    """The key under which Faust keeps a partition's persisted changelog offset."""
    return bytes(table.data.offset_key)


def changelog_topic(table: Any) -> str:
    return str(table.changelog_topic.get_topic_name())


def _engine_store_class() -> type:
    from faust.stores.rocksdb import Store as FaustRocksStore

    class EngineStore(FaustRocksStore):  # type: ignore[misc, valid-type]
        """Faust's RocksDB store (``store="engine://"``, registered as a ``faust.stores``
        entry point in pyproject.toml) that also writes the engine's derived index
        entries for every changelog record Faust itself applies — the rest of a recovery
        past the bulk loader's budget, and standby replicas — so a standby promoted to
        active finds every due TTL and timeout."""

        def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
            events = list(batch)
            super().apply_changelog_batch(events, to_key, to_value)
            indexer = getattr(self.table, "indexer", None)  # an EngineTable's (streams.faust.stores)
            if indexer is None:
                return
            batches: dict[int, Any] = {}
            for event in events:
                message = event.message
                if message.value is None:
                    continue
                for index in indexer(message.key, message.value):
                    wb = batches.get(message.partition)
                    if wb is None:
                        wb = batches[message.partition] = rocksdict.WriteBatch(raw_mode=True)
                    wb.put(index, b"1")
            for partition, wb in batches.items():
                self._db_for_partition(partition).write(wb)

        #: partition → set when the thread opening its handle (:meth:`open_in_thread`) is done
        _opening: dict[int, threading.Event]

        def _db_for_partition(self, partition: int) -> Any:
            """Faust's, after waiting for a thread still opening this partition: RocksDB
            holds a directory lock, so a second open of it (a web read during the
            rebalance) would fail instead of finding the handle."""
            opening = self.__dict__.get("_opening")
            event = opening.get(partition) if opening else None
            if event is not None:
                event.wait()
            return super()._db_for_partition(partition)

        async def open_in_thread(self, partition: int) -> None:
            """Opens one partition's handle off the event loop (Faust opens each in the
            loop, one after another: 16 at a worker's start, 30–70 ms each on this disk,
            RocksDB's fsyncs). A failure is left to Faust's own open, with its retries."""
            if partition in self._dbs or partition in self.__dict__.setdefault("_opening", {}):
                return
            done = self._opening[partition] = threading.Event()

            def open_db() -> None:
                try:
                    if partition not in self._dbs:
                        self._dbs[partition] = self._open_for_partition(partition)
                except Exception as exc:
                    log.info("opening %s[%d] in a thread failed (%r): Faust opens it", self.table.name,
                             partition, exc)
                finally:
                    del self._opening[partition]
                    done.set()

            await asyncio.to_thread(open_db)

        def revoke_partitions(self, table: Any, tps: Any) -> None:
            """Faust's, only when a partition of this table has a handle to drop: Faust
            runs a full ``gc.collect()`` after every revocation, to free the handles it
            dropped, even an empty one — four at each start (one per table), 0.1–0.3 s of
            a start-up on this machine. With nothing dropped there is nothing to free."""
            topics = table.changelog_topic.topics
            if any(tp.topic in topics and tp.partition in self._dbs for tp in tps):
                super().revoke_partitions(table, tps)

    return EngineStore


#: ``store="engine://"`` (the ``faust.stores`` entry point ``engine`` in pyproject.toml).
EngineStore = _engine_store_class()


# -- start-up ------------------------------------------------------------------------------


def _engine_table_manager_class() -> type:
    from faust.tables.manager import TableManager

    class EngineTableManager(TableManager):  # type: ignore[misc, valid-type]
        """Faust's table manager (``App(TableManager=…)``), started without Faust's fixed
        one-second sleep, and with every topic the consumer will subscribe to declared at
        once.

        Rule: every table of the worker is defined while the app is built
        (:func:`streams.assembly.create_app`), before anything starts. Faust's sleep gave
        code running at start-up one second to define more tables before they are
        finalised (``_update_channels``); none does here, and a table defined later is
        refused loudly by Faust ("Too late to add tables"), never lost. The consumer
        subscribes after this (the conductor waits for it), so the second went straight
        into every start and every takeover.

        Topics: Faust declares them one at a time — each table's changelog as it
        starts, then each subscribed topic — with a Metadata round trip before and
        after each CreateTopics (~50 ms each on Apache Kafka, ~1.1 s for this worker's
        22 on an empty broker). Declared here concurrently first; those later calls then
        find them in the metadata. A declaration that fails here is left to Faust's own,
        which fails where it always did."""

        async def on_start(self) -> None:
            if self.should_stop:
                return
            topics = [c for c in list(self.app.topics) if getattr(c, "internal", False)]
            topics += [table.changelog_topic for table in self.values()]
            for result in await asyncio.gather(ask_for_group_coordinator(self.app),
                                               *(t.maybe_declare() for t in topics), return_exceptions=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    log.warning("declaring topics at start-up: %r (declared again one at a time)", result)
                    break
            else:
                await wait_until_listed(self.app, {n for t in topics for n in t.topics},
                                        timeout=float(self.app.conf.broker_request_timeout))
            await hold_join_on_tansu(self.app)
            await self._update_channels()
            await self.recovery.start()

        async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any,
                               generation_id: int = 0) -> None:
            """Faust's, with the RocksDB handles of every newly assigned active partition
            of every table opened first, concurrently in threads (Faust then finds them
            open). Only the handles: recovery, the seek and processing come after, as
            before (streams/engine/position.py)."""
            standbys = self.app.assignor.assigned_standbys()
            opens = [table.data.open_in_thread(tp.partition)
                     for table in self.values() if hasattr(table.data, "open_in_thread")
                     for tp in newly_assigned
                     if tp.topic in table.changelog_topic.topics and tp not in standbys]
            if opens:
                await asyncio.gather(*opens)
            await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    return EngineTableManager


#: ``App(TableManager=EngineTableManager)`` in :func:`streams.assembly.create_app`.
EngineTableManager = _engine_table_manager_class()


async def wait_until_listed(app: Any, names: set[str], *, timeout: float) -> bool:
    """Waits (at most ``timeout`` s) until the broker's metadata lists every topic in
    ``names`` with its partitions; False if it did not in time (then the start goes on).

    Why: a CreateTopics answer does not mean the broker's metadata shows the topic yet.
    A consumer that joined its group before then was assigned none of that topic's
    partitions, and nothing of it until its next metadata refresh (aiokafka's
    ``metadata_max_age_ms``, 5 minutes), while ``/health`` said 200 (how often:
    docs/design-notes.md, "Start-up and group membership"). The tables register and
    the consumer subscribes after this (:class:`EngineTableManager`)."""
    try:
        client = aiokafka_producer(app).client
    except Exception as exc:  # no producer started: nothing to ask with
        log.warning("cannot check the topics in the broker's metadata: %r", exc)
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    missing = sorted(names)
    while True:
        try:
            cluster = await client.fetch_all_metadata()
            missing = [n for n in missing if not cluster.partitions_for_topic(n)]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("metadata at start-up: %r", exc)
        if not missing:
            return True
        if loop.time() >= deadline:
            log.warning("topics not in the broker's metadata after %.0fs: %s (the consumer may not be "
                        "assigned them until its next metadata refresh)", timeout, ", ".join(missing))
            return False
        await asyncio.sleep(0.05)


#: when this module was imported: a little after the process started
_IMPORTED_AT = time.monotonic()


def _process_started() -> float:
    """``time.monotonic()`` at this process's start (Linux ``/proc``; else the import)."""
    try:
        import os

        with open("/proc/self/stat") as f:
            ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT


async def hold_join_on_tansu(app: Any) -> float:
    """On the embedded Tansu broker only, and only when the group has members: the
    consumer joins it no earlier than ``broker_session_timeout / 2`` s after this process
    started. Returns the seconds waited.

    Why: Tansu answers a JoinGroup that comes less than about half a session timeout
    after a member *left* the group only after ~15 s, so a fast restart is slower than
    one that waits. Tansu lists a member that left for seconds after, so the hold runs
    from this process's start, which comes after the old one's leave. A first start
    (no member) is not held; Apache Kafka has no such pause: nothing is held there.
    (The measurements: docs/design-notes.md, "Start-up and group membership".)"""
    from aiokafka.protocol.admin import DescribeGroupsRequest
    from aiokafka.protocol.metadata import MetadataRequest

    try:
        client = aiokafka_producer(app).client
        node = client.get_random_node()
        response = await client.send(node, MetadataRequest([]))
        if getattr(response, "cluster_id", None) != TANSU_CLUSTER_ID:
            return 0.0
        # a group nobody is in (a first start): nothing to wait for
        groups = (await client.send(node, DescribeGroupsRequest([str(app.conf.id)]))).groups
        if not any(group[5] for group in groups):  # (error, id, state, protocol type, protocol, members)
            return 0.0
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("cluster id or group at start-up: %r", exc)
        return 0.0
    wait = _process_started() + float(app.conf.broker_session_timeout) / 2 - time.monotonic()
    if wait > 0:
        log.info("embedded broker: joining the group in %.1fs (Tansu holds a join right after a leave)", wait)
        await asyncio.sleep(wait)
    return max(0.0, wait)


async def ask_for_group_coordinator(app: Any) -> None:
    """One FindCoordinator for the app's group, through the producer's client, while the
    topics are declared (:class:`EngineTableManager`). Why: on an Apache Kafka cluster
    no group has used yet, the first such request makes the broker create
    ``__consumer_offsets``, and the coordinator is "not available" until it exists
    (~1 s here); asked only when the consumer subscribes, after the topics, that second
    came on top. The answer is not used (the consumer asks again); a failure changes
    nothing."""
    try:
        await aiokafka_producer(app).client.coordinator_lookup(0, app.conf.id)  # 0: a group
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("group coordinator not found yet: %r", exc)


def _engine_producer_class() -> type:
    from faust.transport.drivers.aiokafka import Producer

    class EngineProducer(Producer):  # type: ignore[misc, valid-type]
        """Faust's aiokafka producer (``app.transport.Producer``) that declares a topic
        once per process.

        Why: Faust declares a topic again at every step that names it (a table's start,
        the subscription, our DLQ task), and each call costs a Metadata round trip even
        when the topic exists (Faust refreshes metadata after every declaration): 26 such
        calls, ~0.75 s of a start on Apache Kafka. Rule: a topic this process declared
        without an error exists — Faust never alters or re-creates one it finds in the
        metadata either; a failed declaration is tried again next time."""

        declared_topics: set[str]

        async def create_topic(self, topic: str, partitions: int, replication: int, **kwargs: Any) -> None:
            declared = self.__dict__.setdefault("declared_topics", set())
            if topic in declared:
                return
            await super().create_topic(topic, partitions, replication, **kwargs)
            declared.add(topic)

    return EngineProducer


#: ``app.transport.Producer`` in :func:`streams.assembly.create_app`.
EngineProducer = _engine_producer_class()


# -- reading records whose header keys are not UTF-8 ------------------------------------


def read_any_header_key() -> None:
    """Make every aiokafka consumer of this process read records whose header *keys*
    are not UTF-8 (idempotent; called where the app is built and by every other reader).

    Rule: Kafka carries any bytes in a header key, but aiokafka's record reader decodes
    keys as strict UTF-8 and raises inside the fetcher: one such record would stop
    every service and ``dlq ls`` (docs/design-notes.md, "Header trust"). With
    this, a key that is not UTF-8 arrives as a ``str`` decoded with ``surrogateescape``
    (lossless: ``key.encode("utf-8", "surrogateescape")`` gives back the bytes), which
    :func:`streams.engine.headers.is_raw` recognises. Batches whose keys are all UTF-8 are read
    by aiokafka's own (C) reader as before."""
    from aiokafka.consumer import fetcher

    if fetcher.MemoryRecords is not TolerantMemoryRecords:
        global _MemoryRecords
        _MemoryRecords = fetcher.MemoryRecords
        fetcher.MemoryRecords = TolerantMemoryRecords


_MemoryRecords: Any = None


@contextlib.contextmanager
def aiokafka_records() -> Iterator[None]:
    """aiokafka's own record reader inside the block, whatever :func:`read_any_header_key`
    did: for the bench's bare baselines, which measure what a plain aiokafka consumer
    costs (they read only records the bench wrote). Not for anything that reads
    records it did not write."""
    from aiokafka.consumer import fetcher

    saved = fetcher.MemoryRecords
    fetcher.MemoryRecords = _MemoryRecords or saved
    try:
        yield
    finally:
        fetcher.MemoryRecords = saved


class TolerantMemoryRecords:
    """aiokafka's ``MemoryRecords`` (the record batches of one partition's fetch), whose
    batches fall back to :func:`_tolerant_records` when aiokafka's reader fails on a
    header key. It walks the same batch boundaries (``offset:int64 length:int32``) to
    keep each batch's bytes for that fallback."""

    __slots__ = ("_records", "_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._records = _MemoryRecords(data)
        self._data = data
        self._pos = 0

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is None:
            return None
        start = self._pos
        self._pos = start + 12 + struct.unpack_from(">i", self._data, start + 8)[0]
        if getattr(batch, "magic", 2) < 2:  # v0/v1 message sets have no headers
            return batch
        return _TolerantBatch(batch, memoryview(self._data)[start:self._pos])


class _TolerantBatch:
    """One v2 record batch: aiokafka's batch, read again tolerantly from the record
    where aiokafka's reader met a header key that is not UTF-8."""

    __slots__ = ("_batch", "_raw", "_records", "_read")

    def __init__(self, batch: Any, raw: memoryview) -> None:
        self._batch = batch
        self._raw = raw
        self._records: Any = None
        self._read = 0

    def __getattr__(self, name: str) -> Any:  # base_offset, producer_id, validate_crc, …
        return getattr(self._batch, name)

    def __iter__(self) -> "_TolerantBatch":
        return self

    def __next__(self) -> Any:
        if self._records is None:
            self._records = iter(self._batch)
        try:
            record = next(self._records)
        except UnicodeDecodeError:
            self._records = _tolerant_records(bytes(self._raw), skip=self._read)
            record = next(self._records)
        self._read += 1
        return record


def _tolerant_records(raw: bytes, *, skip: int) -> Iterator[Any]:
    """The records of one v2 batch after the first ``skip``, header keys decoded with
    ``surrogateescape``. Layout (Kafka's ``DefaultRecord``): length, attributes,
    timestamp delta, offset delta, key, value, then headers as (key, value) pairs,
    every integer a zig-zag varint and every byte string length-prefixed (-1: null)."""
    from aiokafka.errors import CorruptRecordException
    from aiokafka.record.default_records import _DefaultRecordBatchPy, _DefaultRecordPy
    from aiokafka.record.util import decode_varint

    batch = _DefaultRecordBatchPy(raw)
    batch._maybe_uncompress()
    buf, pos = batch._buffer, batch._pos
    log_append = batch.timestamp_type == batch.LOG_APPEND_TIME

    def chunk(at: int) -> tuple[bytes | None, int]:
        size, at = decode_varint(buf, at)
        if size < 0:
            return None, at
        return bytes(buf[at:at + size]), at + size

    for index in range(batch._num_records):
        length, pos = decode_varint(buf, pos)
        end = pos + length
        _, at = decode_varint(buf, pos)  # attributes: unused in v2 records
        ts_delta, at = decode_varint(buf, at)
        offset_delta, at = decode_varint(buf, at)
        key, at = chunk(at)
        value, at = chunk(at)
        count, at = decode_varint(buf, at)
        if count < 0:
            raise CorruptRecordException(f"invalid number of record headers {count}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            name, at = chunk(at)
            if name is None:
                raise CorruptRecordException("a record header key is null")
            h_value, at = chunk(at)
            headers.append((name.decode("utf-8", "surrogateescape"), h_value))
        if at != end:
            raise CorruptRecordException(f"record of {length} bytes, {at - pos} read")
        pos = end
        if index >= skip:
            timestamp = batch.max_timestamp if log_append else batch.first_timestamp + ts_delta
            yield _DefaultRecordPy(batch.base_offset + offset_delta, timestamp, batch.timestamp_type,
                                   key, value, headers)


# -- consumer bookkeeping ----------------------------------------------------------------


def acknowledge_range(consumer: Any, tp: Any, first: int, last: int) -> None:
    """Offsets ``first..last`` of ``tp`` processed: what Faust's ``Consumer.ack`` does
    per message, once per batch; Faust's commit loop commits them."""
    from faust.types.tuples import ack_lock

    with ack_lock:
        committed = consumer._committed_offset[tp]
        index = consumer._acked_index[tp]
        start = first if committed is None else max(first, committed)
        new = [o for o in range(start, last + 1) if o not in index]
        index.update(new)
        consumer._acked[tp].extend(new)
        consumer._n_acked += len(new)
    consumer._read_offset[tp] = last


def commit_due(consumer: Any) -> bool:
    """True (and the count reset) when ``broker_commit_every`` acks accumulated."""
    every = consumer._commit_every
    if every is not None and consumer._n_acked >= every:
        consumer._n_acked = 0
        return True
    return False


def read_offset(consumer: Any, tp: Any) -> int | None:
    """The last offset of ``tp`` processed (Faust's ``_read_offset``)."""
    return consumer._read_offset.get(tp)


def apply_click_options(options: Sequence[Any]) -> Any:
    """Faust's decorator that applies a command's ``options`` to its click command."""
    from faust.cli.base import _apply_options

    return _apply_options(options)


def fetch_position(consumer: Any, tp: Any) -> int | None:
    """The offset aiokafka fetches next for ``tp`` (Faust's consumer thread's
    ``AIOKafkaConsumer._subscription``), past the transaction markers and aborted
    records it skipped; None when unknown (not assigned, no position yet)."""
    thread = getattr(consumer, "_thread", None)
    aio = getattr(thread, "_consumer", None) if thread is not None else None
    if aio is None:
        return None
    assignment = aio._subscription.subscription.assignment if aio._subscription.subscription else None
    if assignment is None or tp not in assignment.tps:
        return None
    state = assignment.state_value(tp)
    return state.position if state.has_valid_position else None


def aiokafka_client(consumer: Any) -> Any:
    """The ``AIOKafkaClient`` of an aiokafka consumer (metadata refresh, raw requests)."""
    return consumer._client


def to_records(records: Sequence[Any]) -> list[Record]:
    """aiokafka ``ConsumerRecord`` s → engine :class:`Record` s. A header with a null
    value (Kafka allows it) becomes an empty one, which every send of the batch
    accepts (docs/design-notes.md, "Header trust")."""
    return [_record(r) if r.headers else
            Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp or 0)
            for r in records]


def _record(r: Any) -> Record:
    """A record with headers: every one kept in order (repeated names too, so a dead
    letter's evidence shows each), a lookup map beside them."""
    items = tuple((k, v if v is not None else b"") for k, v in r.headers)
    return Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp or 0, dict(items), items)


# -- end offsets from a Fetch (the embedded broker's ListOffsets is short) ---------------


#: The cluster id Tansu reports unless started with another (``--kafka-cluster-id``).
TANSU_CLUSTER_ID = "tansu_cluster"


async def list_offsets_may_be_short(client: Any) -> bool:
    """The capability check behind END_OFFSETS_FROM_FETCH's default: whether this broker's
    ``ListOffsets(LATEST)`` may stop short of the log end (then end offsets come from
    :func:`fetch_high_watermarks`).

    Rule: only the embedded Tansu broker answers short; Apache Kafka's ListOffsets is the
    log end, so on Kafka the workaround is not taken. Told by the Metadata response's
    cluster id (Tansu reports ``tansu_cluster``; Kafka a random 22-character id). A broker
    that cannot be asked counts as short: the Fetch path is correct on every broker, only
    one request per partition dearer."""
    from aiokafka.protocol.metadata import MetadataRequest

    try:
        node = client.get_random_node()
        if node is None:
            await client.force_metadata_update()
            node = client.get_random_node()
        response = await client.send(node, MetadataRequest([]))
        cluster_id = getattr(response, "cluster_id", None)
    except Exception as exc:
        log.warning("could not ask the broker for its cluster id (%r): end offsets from Fetch", exc)
        return True
    short = not cluster_id or cluster_id == TANSU_CLUSTER_ID
    log.info("broker cluster id %s: table-recovery end offsets from %s", cluster_id,
             "Fetch high watermarks (ListOffsets may be short)" if short else "ListOffsets")
    return short


async def fetch_high_watermarks(
    client: Any, partitions: Iterable[Any], listed: Mapping[Any, int]
) -> dict[Any, int]:
    """``max(listed, high watermark of a 1-byte Fetch)`` for each partition.

    Why: the embedded broker answers ``ListOffsets(LATEST)`` with "base offset of the
    newest batch + 1" (batches of 10, 1 and 5 records → 12, not 16); recovery then
    stops early and a restart on an old data dir crashes with ``ConsistencyError``
    (docs/operations.md, "Embedded broker"). A Fetch response carries the true high
    watermark. On Apache Kafka both agree. A partition whose leader is unknown, or
    whose Fetch fails, keeps its listed offset."""
    result = {tp: int(listed.get(tp) or 0) for tp in partitions}
    by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
    for tp, end in result.items():
        node = client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            continue
        by_node[node][tp.topic].append((tp.partition, max(end - 1, 0), 1))
    for node, topics in by_node.items():
        # max_wait 1 ms: 0 ms returned no partitions on the embedded broker.
        request = FetchRequest(1, 1, 1024, 0, [(t, ps) for t, ps in topics.items()])
        try:
            response = await client.send(node, request)
        except Exception as exc:  # keep the listed offsets; recovery may then be short
            log.warning("high-watermark fetch from node %s failed: %r", node, exc)
            continue
        for topic, parts in response.topics:
            for part in parts:
                partition, error_code, high_watermark = part[0], part[1], part[2]
                tp = TopicPartition(topic, partition)
                if error_code == 0 and tp in result:
                    result[tp] = max(result[tp], int(high_watermark))
    return result


def consumer_thread_class(*, fetch_max_wait: float, end_offsets_from_fetch: bool | None,
                          read_committed: bool = False) -> type:
    """Faust's aiokafka consumer thread with the fetch wait and end offsets we need.

    ``end_offsets_from_fetch``: True/False as set (END_OFFSETS_FROM_FETCH); None asks
    the broker once (:func:`list_offsets_may_be_short`). ``read_committed`` (exactly-once):
    aiokafka's ``_isolation_level`` set before the consumer starts — records of aborted
    or open transactions are never fetched, and end offsets are the last stable offset
    (Faust sets it only in its own exactly_once mode, which is not used)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    wait_ms = max(1, int(fetch_max_wait * 1000))

    class EngineConsumerThread(AIOKafkaConsumerThread):  # type: ignore[misc, valid-type]
        def _create_consumer(self, loop: Any) -> Any:
            # Faust builds its consumer with fetch_max_wait_ms=1500: on an idle broker a
            # fetch waits that long even when a record arrives meanwhile, and so do
            # retries that fall due (docs/design-notes.md, "Retry timing").
            consumer = super()._create_consumer(loop)
            consumer._fetch_max_wait_ms = wait_ms
            if read_committed:
                consumer._isolation_level = "read_committed"
            return consumer

        _short_list_offsets: bool | None = end_offsets_from_fetch

        async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
            if self.consumer.in_transaction:
                return await super()._highwaters(partitions)
            consumer = self._ensure_consumer()
            if self._short_list_offsets is None:
                self._short_list_offsets = await list_offsets_may_be_short(consumer._client)
            if not self._short_list_offsets:
                return await super()._highwaters(partitions)
            listed = await consumer.end_offsets(partitions)
            return await fetch_high_watermarks(consumer._client, partitions, listed)

    return EngineConsumerThread


# -- the engine's consumer's base (streams/faust/consumer.py builds on it) ----------------


def faust_consumer_class() -> type:
    """Faust's aiokafka ``Consumer`` with its two private hooks named here once, so
    :class:`streams.faust.consumer.EngineConsumer` overrides only public names:

    - ``_new_consumer_thread`` builds the subclass's ``engine_thread_class``
      (:func:`consumer_thread_class`);
    - ``_wait_next_records`` (where a fetch arrives from the consumer thread) calls
      ``before_fetch(timeout)`` → the timeout to wait with, and ``take_fetched(records)``
      → the records left for Faust's per-message path."""
    from faust.transport.drivers.aiokafka import Consumer

    class FaustConsumer(Consumer):  # type: ignore[misc, valid-type]
        engine_thread_class: type

        def _new_consumer_thread(self) -> Any:
            return self.engine_thread_class(self, loop=self.loop, beacon=self.beacon)

        async def _wait_next_records(self, timeout: float) -> Any:
            timeout = await self.before_fetch(timeout)
            records, active = await super()._wait_next_records(timeout)
            if not records or self.should_stop:
                return records, active
            return await self.take_fetched(records), active

        async def before_fetch(self, timeout: float) -> float:
            return timeout

        async def take_fetched(self, records: Any) -> Any:
            return records

    return FaustConsumer


def move_recovery_offsets(app: Any, offsets: Mapping[Any, int]) -> None:
    """Faust's table recovery counts ``offsets`` (changelog partition → last offset) as
    already applied: its ``active_offsets`` or ``standby_offsets``, as the partition is
    an active or a standby one."""
    recovery = app.tables.recovery
    for tp, last in offsets.items():
        moved = recovery.active_offsets if tp in recovery.active_tps else recovery.standby_offsets
        moved[tp] = last
