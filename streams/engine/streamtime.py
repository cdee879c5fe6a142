"""Time for decisions: stream time per partition, and a monotonic clock per process.

The rule, enforced by :class:`StreamTime` (every pipeline's) and :class:`ProcessClock`
(the worker's clock, given to the pipelines and the driver in ``streams/assembly.py``):

1. **No decision compares the wall clock with a time stored before a restart.** A
   time written into state (a parked event's ``since``, an inventory decision's ``t``,
   a dedup marker, their time-index entries) is a stream time, and is only ever
   compared with a stream time. (A worker restarted on its data dir with its clock
   10 minutes ahead dead-lettered every parked ``OrderPaid`` at once; 400 days ahead,
   inventory's decisions expired and replayed ``OrderCreated`` reserved stock twice.)
2. **Stream time** of a service's partition ``p`` is the largest believed record time
   (rule 4) seen on partition ``p`` of any of the service's topics — Kafka Streams'
   ``STREAM_TIME``. It never goes back, and it is **persisted with the state**: key
   :data:`STREAM_TIME_KEY` in partition ``p`` of the service's first table, written in
   the same state write as the batch that moved it (changelog included), so a restart,
   a wiped data dir or a new owner after a rebalance starts from it, not from 0 and not
   from a wall clock. Records this application wrote itself (derived events, the
   commands between inventory's stages, retries) carry the writing worker's wall clock
   and do not move it; a partition that has none of others' records yet starts at the
   process clock when a decision first needs a time there. A batch's decisions see the
   stream time after all of its records (its records are judged together).
3. **A quiet partition still moves.** The time a decision uses is
   ``stream time + monotonic seconds since this process saw stream time move``
   (:meth:`StreamTime.now`): a parked event on a partition that receives nothing times
   out ``PARK_TIMEOUT`` after it was parked, measured by ``time.monotonic()``, which a
   wall-clock step cannot move. The elapsed part is never persisted and restarts at 0
   in each process (a process cannot measure its own downtime without trusting the
   wall clock): a worker restarted more often than ``PARK_TIMEOUT`` on a partition that
   receives nothing defers that partition's timeouts. When records come again, their
   time takes over (the decision time may step back by the quiet period's drift;
   nothing becomes due earlier because of it). Like a wall-clock punctuation, the quiet
   rule counts time in which the worker could not fetch (broker down) as quiet.
4. **Hostile timestamps.** A record time is believed up to :data:`MAX_CLOCK_SKEW_MS`
   past an *anchor* a record cannot move: ``max(wall clock, stream time loaded at this
   process's start + monotonic seconds since)``; a later one counts as that bound
   (a record with no timestamp counts as the decision time). So a forged year-9999
   timestamp moves stream time by at most the skew, and repeated forgeries do not
   ratchet it (the anchor is not moved by records). The wall clock's one role is this
   bound: ahead of true time it lets forged timestamps up to its own error through;
   behind it, the persisted stream time keeps the bound at true time — except on a
   partition with no stream time yet, where records count at most at the (slow) wall
   clock + skew, so time runs slow and decisions come late, never early.
5. **Which decision uses which clock.** Park timeouts (``order-state``), decision and
   answer expiry (``inventory``), the dedup TTL sweep: :meth:`StreamTime.now` of the
   partition. Dedup freshness: the record's own believed time against the marker
   (a marker is stamped no older than the process clock, so a clock ahead keeps
   markers longer — until stream time reaches them — never shorter).
   Retry due times (``x-not-before``, :func:`streams.engine.routing.due_at_ms`): the
   retry record's time + the tier's delay, and at most the delay from now on the
   :class:`ProcessClock` — monotonic within the process, so a step can make a retry
   due early (harmless: a retry may run any time after its failure) and never keeps
   it waiting longer than its tier's delay. Header and letter timestamps, metrics and
   logs: the :class:`ProcessClock` (informational, no decision).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

#: A record timestamp this far past the anchor (rule 4) is not believed: one record
#: stamped far in the future would otherwise expire its partition's dedup markers
#: (docs/design-notes.md, "Dedup markers").
MAX_CLOCK_SKEW_MS = 60_000

#: Where a service's stream time of a partition is kept (rule 2): in partition ``p`` of
#: its first table. User keys start with a letter or digit, index keys with ``\\x00t``.
STREAM_TIME_KEY = b"\x00s"


class ProcessClock:
    """Epoch seconds that a wall-clock step cannot move: the wall clock read once, at
    construction, plus ``time.monotonic()`` since. Callable like ``time.time``."""

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._base = wall() - monotonic()

    def __call__(self) -> float:
        return self._base + self._monotonic()


class StreamTime:
    """One service's stream time per partition (rules 2–4). ``load`` it from the state
    before use (:meth:`load`), ``observe`` record times, read :meth:`now`, persist
    :meth:`dirty` partitions with the batch."""

    def __init__(self, *, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self.monotonic = monotonic
        #: partition → (stream time ms, monotonic s when it last moved in this process)
        self._at: dict[int, tuple[int, float]] = {}
        #: partition → (stream time loaded at first sight, monotonic s then): rule 4's anchor
        self._anchor: dict[int, tuple[int, float]] = {}
        #: partitions whose stream time moved since they were last persisted
        self._dirty: set[int] = set()

    def load(self, partition: int, stored: bytes | None) -> None:
        """Take the persisted value into account (called per batch and partition: a
        newer value means another owner moved it meanwhile — take it, counting the
        quiet time from now, not from when this process last saw the partition)."""
        if stored is None:
            return
        try:
            value = int(stored)
        except ValueError:
            return
        known = self._at.get(partition)
        if known is None or value > known[0]:
            mono = self.monotonic()
            self._at[partition] = (value, mono)
            self._anchor.setdefault(partition, (value, mono))

    def known(self, partition: int) -> bool:
        return partition in self._at

    def bound(self, partition: int) -> int:
        """The latest record time believed on ``partition`` (rule 4)."""
        anchor = int(self.wall() * 1000)
        loaded = self._anchor.get(partition)
        if loaded is not None:
            anchor = max(anchor, loaded[0] + int((self.monotonic() - loaded[1]) * 1000))
        return anchor + MAX_CLOCK_SKEW_MS

    def believe(self, partition: int, timestamp_ms: int) -> int:
        """A record's time as decisions count it (rule 4)."""
        if timestamp_ms <= 0:
            now = self.now(partition)
            return now if now is not None else self.bound(partition) - MAX_CLOCK_SKEW_MS
        return min(timestamp_ms, self.bound(partition))

    def observe(self, partition: int, time_ms: int) -> None:
        """A believed record time seen on ``partition``: stream time moves if it is newer."""
        known = self._at.get(partition)
        if known is None or time_ms > known[0]:
            self._at[partition] = (time_ms, self.monotonic())
            self._dirty.add(partition)

    def stream_time(self, partition: int) -> int | None:
        """The largest believed record time of ``partition`` (None: none seen, none stored)."""
        known = self._at.get(partition)
        return known[0] if known is not None else None

    def now(self, partition: int) -> int | None:
        """The time decisions on ``partition`` use (rule 3); None: no stream time yet."""
        known = self._at.get(partition)
        if known is None:
            return None
        return known[0] + int(max(0.0, self.monotonic() - known[1]) * 1000)

    def dirty(self) -> Iterable[tuple[int, int]]:
        """Partitions whose stream time moved since :meth:`persisted`, with it."""
        return [(p, self._at[p][0]) for p in sorted(self._dirty)]

    def persisted(self, partitions: Iterable[int]) -> None:
        self._dirty.difference_update(partitions)

    def as_dict(self) -> dict[int, int]:
        return {p: t for p, (t, _) in self._at.items()}
