"""Exactly-once on Apache Kafka: the worker's side of :mod:`streams.engine.transactions`.

- :class:`AiokafkaTxnProducer` — the engine's ``TxnProducer`` on aiokafka 0.14's
  transactional ``AIOKafkaProducer``: ``ProducerFenced`` becomes
  :class:`~streams.engine.transactions.Fenced`; a producer whose sender task has died
  (the end of aiokafka #1004 and #1098: "Unexpected error during batch delivery", state
  FATAL_ERROR, where aiokafka's own ``abort_transaction`` raises ``AssertionError``)
  becomes :class:`~streams.engine.transactions.ProducerDead` — or ``Fenced`` when it
  died of a fence.
- :func:`make_transactions` — the :class:`~streams.engine.transactions.Transactions`
  of a worker: producers made with the worker's connection settings, the consumer
  group's id for ``send_offsets_to_transaction``, and a stopped partition (T5) asking
  the consumer to rejoin its group.
- :func:`refuse_without_transactions` — ``PROCESSING_GUARANTEE=exactly_once`` on a
  broker without transactions (the embedded Tansu broker: aiokafka's InitProducerId
  fails there and ``read_committed`` readers see aborted records) stops start-up with
  one line.

Private aiokafka names used here (checked by tests/unit/test_faust_transactions.py):
``AIOKafkaProducer._sender.sender_task``, ``AIOKafkaProducer._txn_manager``,
``AIOKafkaConsumer._coordinator.request_rejoin`` and Faust's consumer ``_thread``
(its ``thread_loop``, where aiokafka's consumer runs).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from streams.engine.records import TP
from streams.engine.transactions import (
    TRANSACTION_TIMEOUT_MS,
    Fenced,
    ProducerDead,
    Transactions,
)

log = logging.getLogger(__name__)


class AiokafkaTxnProducer:
    """One transactional producer (transactional.id per input partition, T1)."""

    def __init__(self, transactional_id: str, *, bootstrap: str, client_kwargs: Mapping[str, Any],
                 max_request_size: int, transaction_timeout_ms: int = TRANSACTION_TIMEOUT_MS) -> None:
        self.transactional_id = transactional_id
        self.client = AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id=transactional_id,
            transaction_timeout_ms=transaction_timeout_ms, acks="all",
            linger_ms=5, max_batch_size=512 * 1024, max_request_size=max_request_size,
            request_timeout_ms=30_000, client_id=f"order-streams-txn-{transactional_id}",
            **dict(client_kwargs),
        )

    def dead(self) -> BaseException | None:
        """Why the producer cannot go on (its sender task ended), or None."""
        task = self.client._sender.sender_task
        if task is not None and task.done() and not task.cancelled():
            return task.exception() or ProducerDead("the producer's sender stopped")
        if self.client._txn_manager is not None and self.client._txn_manager.is_fatal_error():
            return ProducerDead("the producer is in a fatal state")
        return None

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, (Fenced, ProducerDead)):
            return exc
        if isinstance(exc, ProducerFenced):
            return Fenced(str(exc))
        dead = self.dead()
        if isinstance(dead, ProducerFenced):
            return Fenced(str(dead))
        if dead is not None or isinstance(exc, AssertionError):  # aiokafka's invalid state transition
            return ProducerDead(f"{type(exc).__name__}: {exc} (sender: {dead!r})")
        return exc

    async def _call(self, step: Any) -> None:
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    async def start(self) -> None:
        await self.client.start()  # InitProducerId: fences the previous owner (T1)

    async def begin(self) -> None:
        dead = self.dead()
        if dead is not None:
            raise self._translate(dead)
        await self._call(self.client.begin_transaction())

    async def send_offsets(self, offsets: Mapping[TP, int], group_id: str) -> None:
        await self._call(self.client.send_offsets_to_transaction(
            {TopicPartition(tp.topic, tp.partition): offset for tp, offset in offsets.items()}, group_id))

    async def commit(self) -> None:
        await self._call(self.client.commit_transaction())

    async def abort(self) -> None:
        dead = self.dead()
        if dead is not None:
            raise self._translate(dead)
        await self._call(self.client.abort_transaction())

    async def close(self) -> None:
        try:
            await self.client.stop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead producer's pending futures fail on stop
            log.debug("stopping %s: %r", self.transactional_id, exc)


def request_rejoin(consumer: Any) -> None:
    """Ask the group coordinator for a rebalance (T5), on the thread where Faust's
    aiokafka consumer runs."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        return
    aio = thread._ensure_consumer()
    thread.thread_loop.call_soon_threadsafe(aio._coordinator.request_rejoin)


def make_transactions(app: Any, *, bootstrap: str, client_kwargs: Mapping[str, Any],
                      max_request_size: int, transaction_timeout_ms: int = TRANSACTION_TIMEOUT_MS) -> Transactions:
    """The worker's producers per input partition, in the consumer group ``app.conf.id``,
    with ``transaction_timeout_ms`` (``TRANSACTION_TIMEOUT_MS``, T6)."""

    def make(transactional_id: str) -> AiokafkaTxnProducer:
        return AiokafkaTxnProducer(transactional_id, bootstrap=bootstrap, client_kwargs=client_kwargs,
                                   max_request_size=max_request_size, transaction_timeout_ms=transaction_timeout_ms)

    def on_stopped(tp: TP) -> None:
        request_rejoin(app.consumer)

    transactions = Transactions(make, app.conf.id, on_stopped=on_stopped)

    @app.on_before_shutdown.connect  # type: ignore[misc]  (mode holds receivers strongly: weak=False)
    async def close_producers(app: Any, **kwargs: Any) -> None:
        await transactions.close()

    return transactions


def refuse_without_transactions(app: Any, is_tansu: Any, refused: Any = None) -> None:
    """Before the worker's first Kafka client: ``exactly_once`` on a broker without
    transactions, or with transactional ids this principal may not write, ends start-up
    with one line, exit 1 (not a traceback from the first partition's producer).
    ``is_tansu()`` answers whether the broker is the embedded one (its Metadata cluster
    id); ``refused()`` (:func:`transactional_id_refused`) what the broker refused, or
    None."""
    first_start = app.on_first_start

    async def on_first_start() -> None:
        if await is_tansu():
            print("order-streams: PROCESSING_GUARANTEE=exactly_once needs a broker with transactions "
                  "(Apache Kafka); the embedded Tansu broker has none that work: use at_least_once there",
                  file=sys.__stderr__, flush=True)
            raise SystemExit(1)
        why = await refused() if refused is not None else None
        if why:
            print(f"order-streams: PROCESSING_GUARANTEE=exactly_once: {why}", file=sys.__stderr__, flush=True)
            raise SystemExit(1)
        await first_start()

    app.on_first_start = on_first_start


async def transactional_id_refused(bootstrap: str, client_kwargs: Mapping[str, Any], group_id: str) -> str | None:
    """Start and stop one transactional producer under the group's prefix (the id
    ``<group>-access-check``, never a partition's: that would fence its owner, T1).
    The broker's refusal of the id, as one sentence naming the grant; None if allowed."""
    from aiokafka.errors import ClusterAuthorizationFailedError, TransactionalIdAuthorizationFailed

    probe = f"{group_id}-access-check"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=probe,
                                client_id=f"order-streams-txn-{probe}", **dict(client_kwargs))
    try:
        await producer.start()
    except (TransactionalIdAuthorizationFailed, ClusterAuthorizationFailedError) as exc:
        return (f"the broker refused the TransactionalId {probe!r} ({type(exc).__name__}); grant this "
                f"principal WRITE and DESCRIBE on the TransactionalId prefix '{group_id}-' (one producer "
                f"per input partition, '{group_id}-<topic>-<partition>')")
    finally:
        await producer.stop()
    return None


async def broker_is_tansu(bootstrap: str, client_kwargs: Mapping[str, Any]) -> bool:
    """Whether the broker is the embedded Tansu one (its Metadata cluster id)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.metadata import MetadataRequest

    from streams.faust.compat import TANSU_CLUSTER_ID

    client = AIOKafkaClient(bootstrap_servers=bootstrap, **dict(client_kwargs))
    try:
        await client.bootstrap()
        node = client.get_random_node()
        response = await client.send(node, MetadataRequest([]))
        return getattr(response, "cluster_id", None) == TANSU_CLUSTER_ID
    finally:
        await client.close()


#: Worker settings whose environment variable is also a Faust setting's ``env_name``.
#: Faust reads its settings from ``os.environ`` too, and the environment wins over the
#: App's keyword arguments: ``PROCESSING_GUARANTEE=exactly_once`` switched on Faust's own
#: exactly_once mode beside the engine's (its transaction producers, recovery end offsets
#: from ``last_stable_offset`` — None before a fetch — and a worker joining a group
#: crashed in recovery with ``int(None)``).
SHADOWED_BY_FAUST = ("PROCESSING_GUARANTEE",)


def faust_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment Faust's settings are read from: the worker's, without the
    variables the worker means for itself (:data:`SHADOWED_BY_FAUST`)."""
    return {k: v for k, v in environ.items() if k.upper() not in SHADOWED_BY_FAUST}
