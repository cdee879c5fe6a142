"""Exactly-once on Kafka (``PROCESSING_GUARANTEE=exactly_once``): each batch is one
Kafka transaction of its input partition.

The transaction steps of the consumer-position protocol (:mod:`streams.engine.position`
rule 7 points here). Each is enforced in this module or where the docstring names, and
each has a test on fakes in tests/unit/test_transactions.py; the failure modes are also
caused on Apache Kafka in tests/fault/test_exactly_once_kafka.py (a SIGKILL inside a
transaction, T1; a rebalance mid-batch, T4; a fenced zombie, T5; a timeout, T6):

T1. **One transactional producer per assigned input partition**, ``transactional.id =
    "<group>-<topic>-<partition>"`` (stable: the next owner of the partition uses the
    same id). It is started (``InitProducerId``) when the partition is assigned and
    *before* its committed offset is read (:meth:`Transactions.assign`, called from the
    consumer's seek to committed offsets): the start aborts whatever transaction the
    previous owner left open and fences that owner; the broker answers it only once a
    commit in progress has finished, so the offset read afterwards cannot move.
    aiokafka 0.14 sends ``TxnOffsetCommit`` without the group generation, so KIP-447
    fencing by generation is not available; this per-partition scheme is Kafka
    Streams' first exactly-once mode. Cost (measured, docs/operations.md): ~50 KiB and
    ~2 connections per producer; 24 started in 0.2 s.
T2. **A batch holds the records of one input partition** and runs inside that
    partition's transaction: every derived, retry, dead-letter, rerouted and changelog
    record it sends (the publisher sends through :func:`current`), then the batch's
    next offset — ``send_offsets_to_transaction``, once, after every ack of the batch,
    never cancelled (aiokafka #1098 and #1004 both come from the offset commit racing
    or failing inside aiokafka's sender) — then the commit.
T3. **Local state is written only after the commit**: the state store hands its local
    write batch to :meth:`Open.after_commit` instead of writing it
    (:class:`streams.faust.stores.TableStore`); an abort discards it. Recovery reads
    the changelogs ``read_committed``, so after a crash the local store is rebuilt to
    the committed changelog. The persisted changelog offset stays "the last record
    written" (StateStore.write), now of a *committed* transaction: a crash between the
    commit and the local write leaves the persisted offset before that transaction's
    records, and recovery applies them.
T4. **Any other failure inside a batch aborts it**: a send that fails
    (:class:`TransactionDoomed`, raised by :func:`streams.engine.delivery.deliver`
    and by the pipeline's state flush instead of retrying inside a transaction), the
    offsets, the commit, a rebalance (``Superseded``). Nothing is written locally;
    the driver seeks back and the batch is read again (from the same producer).
T5. **ProducerFenced → that partition stops**: a newer owner started (or the
    transaction outlived the transaction timeout, which the broker reports the same
    way). The batch is dropped, the producer closed, the partition's records are
    sought back and not processed, and no producer is started for it until the group
    assigns it again (:meth:`Transactions.assign`): a zombie that re-initialised its
    producer would fence the real owner. ``on_stopped`` asks the consumer to rejoin
    its group. A producer that can no longer abort (its sender died — the way
    aiokafka #1004 and #1098 end) is treated the same way: stop, rejoin, and a fresh
    producer (whose start aborts the open transaction) on the new assignment.
T6. **Transaction timeout**: producers are made with the ``TRANSACTION_TIMEOUT_MS``
    setting (default :data:`TRANSACTION_TIMEOUT_MS`). The broker counts it from the
    transaction's first record on the coordinator — not from :meth:`TxnProducer.begin`,
    which is local — and aborts a transaction open longer (checked every
    ``transaction.abort.timed.out.transaction.cleanup.interval.ms``, 10 s by default),
    bumping the id's epoch: the batch's next send, offsets or commit fails as fenced
    and the batch ends as T5 (stop the partition, rejoin, read it again on the next
    assignment). A batch keeps its transaction open while one service's records are
    sent and another's HTTP calls still run (services reading one topic share a batch).
T7. **A send the broker refuses for good dooms the batch too** (an ACL denial of a
    derived topic: deliver returns it as permanent, and the transaction cannot commit
    after it). The dead letter cannot ride in that transaction: the pipeline remembers
    the refusal per source record (``Pipeline.refused``, :mod:`streams.engine.pipeline`),
    the batch aborts (T4), and on its re-read the event fails with the remembered
    refusal before its handler runs and is dead-lettered in the next transaction —
    one abort per refused event, not an abort and re-read for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.engine.records import TP

log = logging.getLogger(__name__)

AT_LEAST_ONCE, EXACTLY_ONCE = "at_least_once", "exactly_once"
#: The broker aborts (and fences) a transaction open longer than this (T6).
TRANSACTION_TIMEOUT_MS = 60_000


class Fenced(Exception):
    """A newer producer with the same transactional id started (or the transaction
    timed out): this worker is no longer the partition's owner (T5)."""


class ProducerDead(Exception):
    """The producer can no longer abort or commit (its sender stopped, aiokafka #1004 /
    #1098): treated as :class:`Fenced` (T5)."""


class TransactionDoomed(Exception):
    """A send inside a transaction failed: the batch can only abort (T4). Raised
    instead of sending again, which is what the same failure means outside one."""


class TxnProducer(Protocol):
    """One transactional producer (the adapter wraps aiokafka's). Every method raises
    :class:`Fenced` for ProducerFenced and :class:`ProducerDead` once the producer
    cannot abort any more; anything else is an abortable failure."""

    transactional_id: str
    #: what the publisher sends through while this producer's transaction is open
    client: Any

    async def start(self) -> None: ...
    async def begin(self) -> None: ...
    async def send_offsets(self, offsets: Mapping[TP, int], group_id: str) -> None: ...
    async def commit(self) -> None: ...
    async def abort(self) -> None: ...
    async def close(self) -> None: ...


@dataclass(eq=False)
class Open:
    """The transaction a batch runs in (the value of :func:`current`)."""

    tp: TP
    producer: TxnProducer
    _after: list[Callable[[], Any]] = field(default_factory=list)

    def after_commit(self, write: Callable[[], Any]) -> None:
        """Run ``write`` once the transaction committed (T3); dropped on abort."""
        self._after.append(write)


_CURRENT: ContextVar[Open | None] = ContextVar("streams_transaction", default=None)


def current() -> Open | None:
    """The transaction the running batch belongs to (None: at-least-once, or outside a batch)."""
    return _CURRENT.get()


def doomed(exc: BaseException) -> None:
    """Inside a transaction, a failed send or state write ends the batch (T4): raise
    :class:`TransactionDoomed`. Outside one, return (the caller retries as before)."""
    if _CURRENT.get() is not None:
        raise TransactionDoomed(f"{type(exc).__name__}: {exc}") from exc


def transactional_id(group_id: str, tp: TP) -> str:
    """T1: stable per input partition, the same for every owner of it."""
    return f"{group_id}-{tp.topic}-{tp.partition}"


class Transactions:
    """The producers of the assigned input partitions and the batch transaction (T1–T6)."""

    def __init__(self, make: Callable[[str], TxnProducer], group_id: str, *,
                 on_stopped: Callable[[TP], Any] = lambda tp: None,
                 write_backoff: float = 0.5) -> None:
        self.make = make
        self.group_id = group_id
        self.on_stopped = on_stopped
        self.write_backoff = write_backoff
        self.producers: dict[TP, TxnProducer] = {}
        #: partitions stopped by T5 until the group assigns them again
        self.stopped: set[TP] = set()
        #: outcomes, for metrics and tests: committed / aborted / fenced
        self.counts: dict[str, int] = {"committed": 0, "aborted": 0, "fenced": 0}

    # -- T1: assignment --------------------------------------------------------------

    async def assign(self, tps: Iterable[TP]) -> None:
        """``tps`` are the input partitions assigned now: close the producers of the
        others; start one for each newly assigned partition (and for one stopped by T5:
        the group gave it back, so this worker is its owner again); keep the rest (no
        other owner came in between, or its start fenced ours and T5 follows). Called
        before the committed offsets are read. A start that fails raises: the caller
        must not read offsets or process the partition without its producer."""
        wanted = list(dict.fromkeys(TP(*tp) for tp in tps))
        await self.revoke([tp for tp in self.producers if tp not in wanted])
        self.stopped.clear()
        new = [tp for tp in wanted if tp not in self.producers]
        made = {tp: self.make(transactional_id(self.group_id, tp)) for tp in new}
        results = await asyncio.gather(*(p.start() for p in made.values()), return_exceptions=True)
        failed: BaseException | None = None
        for (tp, producer), result in zip(made.items(), results):
            if isinstance(result, BaseException):
                failed = failed or result
                await self._close(producer)
            else:
                self.producers[tp] = producer
        if failed is not None:
            raise failed

    async def revoke(self, tps: Iterable[TP]) -> None:
        """Close the producers of revoked partitions (an open transaction is aborted by
        the next owner's start, or by the broker's timeout)."""
        for tp in tps:
            producer = self.producers.pop(TP(*tp), None)
            self.stopped.discard(TP(*tp))
            if producer is not None:
                await self._close(producer)

    async def close(self) -> None:
        await self.revoke(list(self.producers))

    def owns(self, tp: TP) -> bool:
        """Whether batches of ``tp`` may run here (a producer, not stopped by T5)."""
        return tp in self.producers and tp not in self.stopped

    # -- T2–T5: one batch --------------------------------------------------------------

    async def run(self, tp: TP, next_offset: int | None, work: Callable[[], Awaitable[bool]]) -> bool:
        """Run ``work`` (the batch; False: it must not commit) in ``tp``'s transaction,
        then commit it with ``next_offset`` as the group's offset for ``tp`` (None: no
        offset, e.g. maintenance). True only if the transaction committed and its
        local writes are done."""
        producer = self.producers.get(tp)
        if producer is None or tp in self.stopped:
            return False
        txn = Open(tp, producer)
        try:
            await producer.begin()
        except (Fenced, ProducerDead) as exc:
            await self._stop(tp, exc)
            return False
        token = _CURRENT.set(txn)
        try:
            ok = await work()
        except asyncio.CancelledError:
            _CURRENT.reset(token)
            await self._abort(tp, producer, "cancelled")
            raise
        except Exception as exc:
            _CURRENT.reset(token)
            # a fenced or dead producer shows here as a failed send; its abort then
            # raises Fenced / ProducerDead, and _abort stops the partition (T5)
            await self._abort(tp, producer, repr(exc))
            return False
        _CURRENT.reset(token)
        if not ok:
            await self._abort(tp, producer, "the batch did not finish (rebalance)")
            return False
        try:
            if next_offset is not None:
                await producer.send_offsets({tp: next_offset}, self.group_id)
            await producer.commit()
        except (Fenced, ProducerDead) as exc:
            await self._stop(tp, exc)
            return False
        except asyncio.CancelledError:
            await self._abort(tp, producer, "cancelled")
            raise
        except Exception as exc:
            await self._abort(tp, producer, repr(exc))
            return False
        self.counts["committed"] += 1
        await self._apply(txn)
        return True

    async def _apply(self, txn: Open) -> None:
        """T3: the committed batch's local writes. Their changelog records are
        committed, so a local write that fails is tried again (a full DATA_DIR: the
        store reopens its handle) — skipping it would leave the store behind."""
        for write in txn._after:
            wait = self.write_backoff
            while True:
                try:
                    result = write()
                    if asyncio.iscoroutine(result):
                        await result
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error("%s[%d]: local state of a committed batch could not be written (%r); "
                              "trying again in %.1fs", txn.tp.topic, txn.tp.partition, exc, wait)
                    await asyncio.sleep(wait)
                    wait = min(5.0, wait * 2)

    async def _abort(self, tp: TP, producer: TxnProducer, why: str) -> None:
        self.counts["aborted"] += 1
        log.info("%s[%d]: transaction aborted (%s); the batch will be read again", tp.topic, tp.partition, why)
        try:
            await producer.abort()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Fenced, ProducerDead, or an abort that failed: T5
            await self._stop(tp, exc)

    async def _stop(self, tp: TP, exc: BaseException) -> None:
        """T5: the partition stops until it is assigned again; never re-initialised here."""
        self.counts["fenced"] += 1
        self.stopped.add(tp)
        producer = self.producers.pop(tp, None)
        log.warning("%s[%d]: %s (%s); the partition stops here until the group assigns it again",
                    tp.topic, tp.partition,
                    "fenced by a newer owner or a transaction timeout" if isinstance(exc, Fenced)
                    else "its transactional producer cannot go on", exc)
        if producer is not None:
            await self._close(producer)
        try:
            self.on_stopped(tp)
        except Exception:
            log.exception("asking to rejoin the group failed")

    @staticmethod
    async def _close(producer: TxnProducer) -> None:
        try:
            await producer.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("closing transactional producer %s: %r", producer.transactional_id, exc)
