"""A consuming service's shape as the engine sees it — what it reads, remembers and
writes on failure — and the topic names derived from a service's name.

Retry and DLQ topic names are derived from the service name (``<service>.retry.<n>``,
``<service>.dlq``, ``<service>.dlq.redriven``): the contract's naming, in one place. The
concrete services are listed in :mod:`streams.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass


def retry_topic(service: str, tier: int) -> str:
    return f"{service}.retry.{tier}"


def dlq_topic(service: str) -> str:
    return f"{service}.dlq"


def ledger_topic(service: str) -> str:
    """Where ``dlq redrive`` records what it has redriven."""
    return f"{dlq_topic(service)}.redriven"


@dataclass(frozen=True)
class ServiceSpec:
    """What a consuming service reads, remembers and writes on failure."""

    name: str
    #: topics the service consumes (each record of them is processed by it)
    sources: tuple[str, ...]
    #: Faust tables (RocksDB + changelog) holding the service's state
    tables: tuple[str, ...]
    #: topics the service produces to (its derived events and internal topics)
    derived: tuple[str, ...] = ()
    description: str = ""

    @property
    def dlq(self) -> str:
        return dlq_topic(self.name)

    @property
    def ledger(self) -> str:
        return ledger_topic(self.name)

    def retry_topics(self, tiers: int) -> tuple[str, ...]:
        return tuple(retry_topic(self.name, n) for n in range(1, tiers + 1))

    def retry_tier_of(self, topic: str) -> int | None:
        """``n`` when ``topic`` is this service's ``<name>.retry.<n>``, else None."""
        prefix = f"{self.name}.retry."
        if topic.startswith(prefix) and topic[len(prefix):].isdigit():
            return int(topic[len(prefix):])
        return None
