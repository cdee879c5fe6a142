"""The overview: per service, what the worker did and what waits — from its own
metrics registry, the engine driver, the assignment and table recovery.

Rates come from the counters sampled each time the overview is asked for (the page
asks every 2 s): events/s over the last :data:`WINDOW` seconds, or "–" until two
samples are at least a second apart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from streams import registry
from streams.http.console.html import badge, e, number, table, url

if TYPE_CHECKING:
    from streams.worker import Worker

WINDOW = 60.0
STATUSES = ("success", "duplicate", "parked", "retry", "dead_letter")

Key = tuple[str, ...]


def counter_values(counter: Any) -> dict[Key, float]:
    """label values → value of a prometheus_client counter (its ``_total`` samples)."""
    out: dict[Key, float] = {}
    for family in counter.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                out[tuple(s.labels.values())] = s.value
    return out


class Sampler:
    """Totals sampled over time → per-second rates over the last ``window`` seconds."""

    def __init__(self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.samples: deque[tuple[float, dict[Key, float]]] = deque()

    def add(self, totals: dict[Key, float]) -> tuple[dict[Key, float | None], float]:
        """Record ``totals`` now; (rate of each key or None, seconds the rates span)."""
        now = self.clock()
        self.samples.append((now, dict(totals)))
        # the base is the oldest sample within the window, or (after a pause) the newest
        # one at least a second old
        while (len(self.samples) > 1 and now - self.samples[0][0] > self.window
               and now - self.samples[1][0] >= 1.0):
            self.samples.popleft()
        base_t, base = self.samples[0]
        span = now - base_t
        if span < 1.0:
            return {k: None for k in totals}, 0.0
        return {k: max(0.0, (v - base.get(k, 0.0)) / span) for k, v in totals.items()}, span


def _tps(tps: Iterable[Any]) -> list[tuple[str, int]]:
    return sorted((tp.topic, tp.partition) for tp in tps)


def assignment(app: Any) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(active, standby) partitions of this worker."""
    try:
        return _tps(app.assignor.assigned_actives()), _tps(app.assignor.assigned_standbys())
    except Exception:  # not assigned yet
        return [], []


def snapshot(worker: "Worker", sampler: Sampler) -> dict[str, Any]:
    """Everything the overview shows, JSON-ready (``GET /console/api/overview``)."""
    m = worker.metrics
    processed = counter_values(m.event_processed)  # (service, type, status)
    retried = counter_values(m.retry_scheduled)  # (service, tier)
    dead = counter_values(m.dead_letter)  # (service, reason)
    totals: dict[Key, float] = {}
    for (service, _, status), v in processed.items():
        totals[("events", service, status)] = totals.get(("events", service, status), 0.0) + v
    for (service, reason), v in dead.items():
        totals[("dead", service, reason)] = v
    rates, span = sampler.add(totals)
    lag = [(t, p, n) for t, p, n in m.consumer_lag.source()]
    actives, standbys = assignment(worker.app)
    tiers = len(worker.settings.retry_delays)
    now_ms = int(time.time() * 1000)
    recovering = worker.recovery.rows()
    services = []
    for name in worker.services:
        spec = registry.service(name)
        retry_topics = spec.retry_topics(tiers)
        changelogs = {worker.tables[t].changelog_topic.get_topic_name(): t for t in spec.tables if t in worker.tables}
        consumed = set(spec.sources) | set(retry_topics)
        events = {s: {"total": totals.get(("events", name, s), 0.0), "per_s": rates.get(("events", name, s))}
                  for s in STATUSES}
        tier_rows = []
        for n, topic in enumerate(retry_topics, 1):
            paused = sorted((tp.partition, due) for tp, (due, _) in worker.driver.paused.items() if tp.topic == topic)
            tier_rows.append({
                "tier": n, "topic": topic, "delay_s": worker.settings.retry_delays[n - 1],
                "waiting": sum(k for t, _, k in lag if t == topic),
                "scheduled_total": retried.get((name, str(n)), 0.0),
                "paused": [{"partition": p, "due_in_s": max(0.0, (due - now_ms) / 1000)} for p, due in paused],
            })
        oldest = worker.driver.oldest_waiting_ms(name)
        services.append({
            "name": name,
            "description": spec.description,
            "sources": list(spec.sources),
            "dlq": spec.dlq,
            "events": events,
            "retries": {"tiers": tier_rows, "oldest_age_s": (now_ms - oldest) / 1000 if oldest is not None else None},
            "dead_letters": [{"reason": r, "total": v, "per_s": rates.get(("dead", name, r))}
                             for (s, r), v in sorted(dead.items()) if s == name],
            "lag": [{"topic": t, "partition": p, "lag": k} for t, p, k in lag if t in consumed],
            "owned": {
                "consumed": [f"{t}:{p}" for t, p in actives if t in consumed],
                "tables": [f"{changelogs[t]}:{p}" for t, p in actives if t in changelogs],
                "standby": [f"{changelogs[t]}:{p}" for t, p in standbys if t in changelogs],
            },
            "recovery": [{"table": t, "partition": p, "remaining": k} for t, p, k in recovering if t in spec.tables],
        })
    app = worker.app
    return {
        "worker": worker.settings.web_url,
        "time_ms": now_ms,
        "rate_window_s": round(span, 1),
        "recovered": bool(app.tables.recovery.completed.is_set()),
        "rebalancing": bool(app.rebalancing),
        "recovery": worker.recovery.summary(),
        "services": services,
    }


def _rate(v: float | None) -> str:
    return "–" if v is None else number(v, 1)


def grouped(names: list[str]) -> str:
    """``["t:0", "t:1", "u:2"]`` → ``t [0, 1]; u [2]`` (escaped, one topic a line)."""
    parts: dict[str, list[str]] = {}
    for name in names:
        topic, _, partition = name.rpartition(":")
        parts.setdefault(topic, []).append(partition)
    return "<br>".join(f"{e(t)} [{e(', '.join(ps))}]" for t, ps in parts.items())


def render_service(s: dict[str, Any]) -> str:
    ev = s["events"]
    events = table(["status", "total", "events/s"],
                   [[badge(st, "ok" if st == "success" else "bad" if st == "dead_letter" else ""),
                     number(ev[st]["total"]), _rate(ev[st]["per_s"])] for st in STATUSES], cls="events")
    tiers = table(["tier", "delay", "waiting", "scheduled", "paused partitions"],
                  [[e(t["topic"]), f'{number(t["delay_s"], 1)} s', number(t["waiting"]), number(t["scheduled_total"]),
                    e(", ".join(f'{p["partition"]} (due in {p["due_in_s"]:.1f} s)' for p in t["paused"]) or "–")]
                   for t in s["retries"]["tiers"]], empty="no retry tiers (RETRY_DELAYS is empty)")
    oldest = s["retries"]["oldest_age_s"]
    dead = table(["reason", "since start", "per s"],
                 [[f'<a href="{e(url("/console/dlq", service=s["name"], reason=d["reason"]))}">{e(d["reason"])}</a>',
                   number(d["total"]), _rate(d["per_s"])] for d in s["dead_letters"]],
                 empty="none since this worker started")
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for r in s["lag"]:
        by_topic.setdefault(r["topic"], []).append((r["partition"], r["lag"]))
    lag = table(["topic", "lag", "per partition"],
                [[e(t), number(sum(k for _, k in ps)),
                  '<span class="mono">' + e(" · ".join(f"{p}: {k:,}" for p, k in sorted(ps))) + "</span>"]
                 for t, ps in by_topic.items()], empty="no partitions of this service assigned here", cls="lag")
    owned = {k: grouped(v) for k, v in s["owned"].items()}
    recovery = table(["table", "partition", "records left"],
                     [[e(r["table"]), str(r["partition"]), number(r["remaining"])] for r in s["recovery"]],
                     empty="recovered")
    return (
        f'<section class="card service" data-service="{e(s["name"])}"><h2>{e(s["name"])}</h2>'
        f'<p class="muted">{e(s["description"])}</p>'
        f'<div class="grid"><div><h3>Events by status</h3>{events}'
        f'<p>Duplicates: <b class="duplicates">{number(ev["duplicate"]["total"])}</b> '
        f'({_rate(ev["duplicate"]["per_s"])}/s)</p></div>'
        f'<div><h3>Retries waiting</h3>{tiers}<p>Oldest waiting: '
        f'<b>{"–" if oldest is None else number(oldest, 1) + " s"}</b></p>'
        f'<h3>Dead letters by reason</h3>{dead}'
        f'<p><a href="{e(url("/console/dlq", service=s["name"]))}">Browse {e(s["dlq"])} →</a></p></div>'
        f'<div><h3>Consumer lag</h3>{lag}</div>'
        f'<div><h3>Partitions owned here</h3><p class="mono owned">{owned["consumed"] or "none"}</p>'
        f'<h3>Table partitions</h3><p class="mono">{owned["tables"] or "none"}</p>'
        f'<p class="muted">standby: <span class="mono">{owned["standby"] or "none"}</span></p>'
        f'<h3>Recovery</h3>{recovery}</div></div></section>'
    )


def render_overview(snap: dict[str, Any]) -> str:
    """The live part of the overview page (also what the page's script fetches)."""
    state = ("rebalancing", "warn") if snap["rebalancing"] else \
        ("ready", "ok") if snap["recovered"] else ("recovering tables", "warn")
    left = snap["recovery"]["records_remaining"]
    window = f'rates over the last {snap["rate_window_s"]:.0f} s' if snap["rate_window_s"] else \
        "rates appear at the next refresh"
    head = (
        f'<p class="status">Worker <span class="mono">{e(snap["worker"])}</span> {badge(state[0], state[1])} '
        f'{"" if not left else badge(f"{left:,} changelog records to load", "warn")} '
        f'<span class="muted">refreshed <time class="refreshed" data-ms="{snap["time_ms"]}">'
        f'{e(time.strftime("%H:%M:%S", time.gmtime(snap["time_ms"] / 1000)))} UTC</time>; {e(window)}</span></p>'
    )
    services = "".join(render_service(s) for s in snap["services"]) or '<p class="empty">no services run here</p>'
    return head + services
