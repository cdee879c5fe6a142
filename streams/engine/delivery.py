"""Sending a batch's records with every broker ack awaited, within bounds.

:func:`deliver` is the only way the engine produces. For each message:

1. checked before it is sent — a topic outside the registry or a negative
   partition (:class:`UnknownDestination`), a record larger than the
   producer accepts (:class:`TooLarge`), a key or value that is not bytes
   (:class:`Unserializable`): such a message is never sent, it is returned to the
   caller, who dead-letters the event it belonged to;
2. sent; a failed ack the publisher reports as permanent (the same three classes)
   is returned likewise;
3. any other failure is transient: the message is sent again after a backoff until
   acknowledged. Nothing after this step may run before every ack is in, so this
   never gives up — but once sends have failed for longer than the send budget,
   :class:`~streams.engine.health.Health` reports the worker unhealthy.
   Inside an exactly-once transaction a transient failure is not sent again: it
   raises :class:`~streams.engine.transactions.TransactionDoomed` and the batch
   aborts (a transaction with a failed send cannot commit; T4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from streams.engine.errors import PermanentError, StreamsError, TooLarge, UnknownDestination, Unserializable
from streams.engine.health import Health
from streams.engine.ports import Publisher
from streams.engine.records import Ack, Outgoing
from streams.engine.transactions import doomed

log = logging.getLogger(__name__)


class Checker:
    """Why a message can never be sent, or None (per-topic answers cached for one call)."""

    def __init__(self, publisher: Publisher, allowed: Callable[[str], bool]) -> None:
        self.publisher = publisher
        self.allowed = allowed
        self.limit = publisher.max_message_bytes
        self._topics: dict[str, bool] = {}

    def __call__(self, message: Outgoing) -> StreamsError | None:
        topic, key, value = message.topic, message.key, message.value
        allowed = self._topics.get(topic)
        if allowed is None:
            allowed = self._topics[topic] = self.allowed(topic)
        if not allowed:
            return UnknownDestination(f"topic {topic[:200]!r} is not one this worker writes")
        if (key is not None and type(key) is not bytes) or (value is not None and type(value) is not bytes):
            return Unserializable(f"key/value of a record for {topic} are not bytes")
        if message.partition is not None and message.partition < 0:
            return UnknownDestination(f"{topic} has no partition {message.partition}")
        size = (len(key) if key else 0) + (len(value) if value else 0)
        if message.headers:
            size += sum(len(k) + len(v) for k, v in message.headers)
        if size > self.limit:
            return TooLarge(f"record for {topic} is {size} bytes (limit {self.limit})")
        return None


def check(message: Outgoing, publisher: Publisher, allowed: Callable[[str], bool]) -> StreamsError | None:
    """Why ``message`` can never be sent, or None."""
    return Checker(publisher, allowed)(message)


async def gather_acks(acks: Sequence[Ack]) -> list[int | BaseException]:
    """Each message's offset (its own, not its batch's) or exception; every batch
    future awaited once, however many messages share it."""
    unique = {id(future): future for future, _ in acks}
    results = dict(zip(unique, await asyncio.gather(*unique.values(), return_exceptions=True)))
    out: list[int | BaseException] = []
    for future, index in acks:
        r = results[id(future)]
        out.append(r if isinstance(r, BaseException) else r.offset + index)
    return out


async def deliver(
    publisher: Publisher,
    messages: Sequence[Outgoing],
    *,
    allowed: Callable[[str], bool],
    health: Health | None = None,
    backoff: float = 0.5,
    max_backoff: float = 5.0,
    on_retry: Callable[[int], Any] = lambda n: None,
) -> tuple[list[int | None], list[tuple[int, StreamsError]]]:
    """Send ``messages``; return each one's offset (None for the ones never sent) and
    ``(index, error)`` for each message that can never be sent."""
    delivered: list[int | None] = [None] * len(messages)
    rejected: list[tuple[int, StreamsError]] = []
    pending: list[int] = []
    checker = Checker(publisher, allowed)
    for i, m in enumerate(messages):
        problem = checker(m)
        if problem is None:
            pending.append(i)
        else:
            rejected.append((i, problem))
    wait = backoff
    while pending:
        try:  # sending itself raises when nothing could be enqueued (metadata timeout)
            acks = await publisher.send_many([messages[i] for i in pending])
            results = await gather_acks(acks)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            results = [exc] * len(pending)
        retry: list[int] = []
        first_error: BaseException | None = None
        for i, result in zip(pending, results):
            if isinstance(result, PermanentError) or isinstance(result, TooLarge):
                rejected.append((i, result))
            elif isinstance(result, BaseException):
                retry.append(i)
                first_error = first_error or result
            else:
                delivered[i] = result
        if retry:
            assert first_error is not None
            doomed(first_error)  # exactly-once: the batch aborts instead (T4)
            on_retry(len(retry))
            if health is not None:
                health.send_failed(first_error)
            log.error("%d of %d sends failed (%r); sending them again in %.1fs",
                      len(retry), len(pending), first_error, wait)
            await asyncio.sleep(wait)
            wait = min(max_backoff, wait * 2)
        elif health is not None:
            health.send_succeeded()
        pending = retry
    rejected.sort()
    return delivered, rejected
