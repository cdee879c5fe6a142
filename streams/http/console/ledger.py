"""The redrive ledgers' ids for the console's "already redriven" marks, read
incrementally: the first page reads each ``<service>.dlq.redriven`` once, later pages
only what was appended since (100,000 redriven letters are read once, not per page).

Only done records count (a claim is no redrive yet). Redrive itself never trusts this
cache: every send is claimed on the ledger first (:class:`streams.ops.dlq.Claims`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from contextlib import aclosing
from typing import Any

from aiokafka import TopicPartition

from streams.ops import dlq
from streams.registry import ledger_topic


class LedgerMarks:
    def __init__(self, bootstrap: str, client_kwargs: Mapping[str, Any]) -> None:
        self.bootstrap = bootstrap
        self.kafka = dict(client_kwargs)
        #: service → ids read so far
        self.ids: dict[str, set[str]] = {}
        #: service → partition → next offset to read
        self.positions: dict[str, dict[int, int]] = {}
        self.lock = asyncio.Lock()

    async def redriven(self, services: Iterable[str]) -> set[str]:
        """Every id in the ledgers of ``services``, brought up to date."""
        names = list(services)
        async with self.lock:
            async with dlq._consumer(self.bootstrap, self.kafka) as consumer:
                for name in names:
                    await self._catch_up(consumer, name)
            return set().union(*(self.ids.get(n, set()) for n in names))

    async def _catch_up(self, consumer: Any, service: str) -> None:
        topic = ledger_topic(service)
        tps = [TopicPartition(topic, p) for p in await dlq._partitions(consumer, topic, self.bootstrap)]
        if not tps:
            return
        ends = await dlq._ends(consumer, tps, self.bootstrap)
        ids = self.ids.setdefault(service, set())
        positions = self.positions.setdefault(service, {})
        if any(ends[tp] < positions.get(tp.partition, 0) for tp in tps):  # the topic was recreated
            ids.clear()
            positions.clear()
        for tp in tps:
            start = positions.get(tp.partition, 0)
            if ends[tp] <= start:
                continue
            records = dlq._scan(consumer, tp, start or None, ends[tp], self.bootstrap)
            async with aclosing(records) as stream:
                async for r in stream:
                    if r.key and dlq.ledger_kind(r.value) == "done":  # a claim is no redrive yet
                        ids.add(r.key.decode("utf-8", "replace"))
            positions[tp.partition] = ends[tp]

    def add(self, service: str, letter_id: str) -> None:
        """A redrive the console just made (shown before the ledger is read again)."""
        self.ids.setdefault(service, set()).add(letter_id)
