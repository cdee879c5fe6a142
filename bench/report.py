"""Goals, the summary rows (median and spread over ``--repeat``), the markdown
report and the plot. Everything in docs/benchmarks.md comes from a results dict."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _dig(d: Any, *path: Any) -> Any:
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return None
    return d


def _ok(pairs: list[Any] | None) -> list[dict[str, Any]]:
    return [p for p in (pairs or []) if p]


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# -- goals ---------------------------------------------------------------------------------

BROKER_NAMES = {"kafka": "Apache Kafka", "tansu": "Tansu"}
BROKER_TEXT = {"kafka": "Apache Kafka 4.1.1 (one KRaft node from Maven Central jars, streams/broker/kafka.py)",
               "tansu": "the embedded Tansu (memory store)"}

#: key → (label, goal text, check on the median, digits, method)
GOALS: dict[str, tuple[str, str, Callable[[float], bool], int, str]] = {
    "headline": (
        "**Headline** — whole worker, default `SERVICES`, full lifecycle: orders/s ÷ bare loop events/s",
        "≥ 0.12", lambda v: v >= 0.12, 3,
        "stock set for 5 SKUs, N `OrderCreated` + N `OrderPaid` produced first; done when order-state applied "
        "N `NotificationSent` and N inventory outcomes (reserved + rejected)"),
    "paid": (
        "`OrderPaid` flood, default `SERVICES`: events/s ÷ bare loop", "≥ 0.6", lambda v: v >= 0.6, 3,
        "done when notifications processed every record and order-state every `OrderPaid` and every "
        "`NotificationSent`"),
    "paid-notifications": (
        "`OrderPaid` flood, `SERVICES=notifications`: events/s ÷ bare loop", "≥ 0.8", lambda v: v >= 0.8, 3,
        "done when notifications processed every record"),
    "parked": (
        "Parked flood, default `SERVICES` ÷ the same with order-state off (each ÷ its bare loop)",
        "≥ 0.8", lambda v: v >= 0.8, 3,
        "`OrderPaid` with distinct ids, no `OrderCreated`; off = `SERVICES=notifications,inventory`"),
    "parked-dlq": (
        "Parked orders in `order-state.dlq` as `out_of_order_timeout` after `PARK_TIMEOUT`",
        "all", lambda v: v >= 1.0, 3,
        "read `order-state.dlq` until a letter per parked event arrived; distinct order ids of the "
        "`OrderPaid` letters ÷ orders parked"),
    "recovery": (
        "P2 bulk recovery records/s ÷ raw aiokafka consume of the changelog", "≥ 0.5", lambda v: v >= 0.5, 3,
        "the loader's own log line after a wiped data dir ÷ a group-less aiokafka read of the same topic "
        "with the loader's fetch sizes"),
    "recovery-healthy": (
        "P2 time to healthy: wiped data dir − data dir kept (the group join)", "≤ 5 s", lambda v: v <= 5.0, 1,
        "process start → `/health` 200, SIGTERM before each start"),
    "sweep": (
        "Sweep cost: TTL sweep over 1,000,000 ÷ over 100,000 live keys (same expired keys)",
        "≤ 2", lambda v: 0.5 <= v <= 2.0, 2,
        "in-process `Pipeline.maintain` (notifications) over a RocksDB store; median of the rounds"),
    "kstreams": (
        "Reference: `SERVICES=notifications` worker ÷ Kafka Streams `at_least_once` (same flood, same broker)",
        "≥ 0.5", lambda v: v >= 0.5, 3,
        "Kafka Streams 4.1.1, Processor API, one stream thread, RocksDB dedup store with changelog "
        "(bench/kafka-streams), fresh Kafka broker, same inputs; Kafka only"),
    "kstreams-eos": (
        "Reference: `SERVICES=notifications` worker (at-least-once) ÷ Kafka Streams `exactly_once_v2`",
        "–", lambda v: True, 3,
        "as above with `processing.guarantee=exactly_once_v2` (commit interval 100 ms, Streams' default)"),
    "eos": (
        "`PROCESSING_GUARANTEE=exactly_once` ÷ `at_least_once`: `OrderPaid` flood, default `SERVICES`",
        "≥ 0.7", lambda v: v >= 0.7, 3,
        "the `paid` flood twice on fresh Kafka brokers, both at `BATCH_SIZE=500` (the default), alternating "
        "which runs first; events/s ÷ events/s; Kafka only (Tansu has no transactions)"),
    "scale": (
        "Scale over cores: two worker processes in one group ÷ one (`OrderPaid` flood, default `SERVICES`)",
        "–", lambda v: True, 2,
        "each run: every worker healthy and the group settled, then the flood produced; first record → every "
        "service done (bench/scale.py); the broker and the workers share the 2 cores"),
    "quix": (
        "Reference: `SERVICES=notifications` worker ÷ Quix Streams (same flood)", "≥ 1.0", lambda v: v >= 1.0, 3,
        "Quix 3.28.1 in its own venv (bench/quix.py), fresh broker, same inputs"),
    "relay": (
        "P3 outbox relay rows/s ÷ raw aiokafka producer", "≥ 0.5", lambda v: v >= 0.5, 3,
        "SQLite outbox, batches of 500, acks awaited; raw: same records, acks awaited per 500"),
    "latency-notifications": (
        "P4 p99 latency at 1,000 orders/s, `SERVICES=notifications` (ms)", "≤ 50", lambda v: v <= 50, 1,
        "outbox commit → `NotificationSent` on the broker, `FETCH_MAX_WAIT=0.01`"),
    "latency-default": (
        "P4 p99 latency at 1,000 orders/s, default `SERVICES` (ms)", "≤ 50", lambda v: v <= 50, 1,
        "as above, with order-state and inventory running (order-state parks the `OrderPaid`)"),
    "retry": (
        "P5 worst retry delay ÷ configured", "≤ 1.10", lambda v: v <= 1.10, 3,
        "gateway stub failing 3 times; gaps between attempts vs `RETRY_DELAYS=0.5,1,2`"),
    "frontdoor": (
        "Front door: `POST /orders` requests/s, wrk -t2 -c64, SQLite default settings", "≥ 2,000",
        lambda v: v >= 2000, 0,
        "wrk (its own process) for 15 s after a 2 s warm-up; relay in the service's process, fresh broker "
        "(bench/frontdoor.py)"),
    "frontdoor-p99": (
        "Front door: `POST /orders` p99 latency at 64 connections (ms)", "≤ 50", lambda v: v <= 50, 1,
        "wrk --latency, the same run"),
    "frontdoor-pg": (
        "Front door: `POST /orders` requests/s, wrk -t2 -c64, PostgreSQL (fsync on)", "≥ 2,000",
        lambda v: v >= 2000, 0, "as above, a private PostgreSQL server (Debian's), the pool's 10 connections"),
    "frontdoor-pg-p99": (
        "Front door: `POST /orders` p99 latency at 64 connections, PostgreSQL (ms)", "≤ 50", lambda v: v <= 50, 1,
        "wrk --latency, the same run"),
    "startup": (
        "start-up: start → /health 200, every service, empty broker (s)", "≤ 3 s", lambda v: v <= 3.0, 2,
        "`faust --quiet -A streams worker`, `Popen` → first `/health` 200 (polled every 50 ms), fresh broker "
        "per round (bench/startup.py)"),
    "startup-restart": (
        "start-up: the same worker restarted on its data dir (s)", "–", lambda v: True, 2,
        "SIGTERM, start again: topics and group exist (a restart, a takeover)"),
}


def values_of(r: dict[str, Any]) -> dict[str, list[float]]:
    pairs = r.get("pairs", {})
    out: dict[str, list[float]] = {}
    for key in ("headline", "paid", "paid-notifications", "parked"):
        out[key] = [p["ratio"] for p in _ok(pairs.get(key))]
    dlq = r.get("parked_dlq")
    out["parked-dlq"] = [dlq["paid_orders_dead_lettered"] / dlq["expected_orders"]] if dlq else []
    rounds = _dig(r, "recovery", "rounds") or []
    out["recovery"] = [x["ratio"] for x in rounds if x.get("ratio") is not None]
    out["recovery-healthy"] = [x["wiped_minus_kept_s"] for x in rounds]
    sweep = r.get("sweep")
    out["sweep"] = [sweep["ratio"]] if sweep and sweep.get("ratio") is not None else []
    flood = _ok(pairs.get("paid-notifications"))
    out["kstreams"] = [p["worker_over_kstreams_at_least_once"] for p in flood
                       if "worker_over_kstreams_at_least_once" in p]
    out["kstreams-eos"] = [p["worker_over_kstreams_exactly_once_v2"] for p in flood
                           if "worker_over_kstreams_exactly_once_v2" in p]
    out["quix"] = [p["worker_over_quix"] for p in _ok(pairs.get("paid-notifications")) if "worker_over_quix" in p]
    out["eos"] = [p["ratio"] for p in _ok(pairs.get("eos"))]
    out["scale"] = [r["scale"]["factor"]] if r.get("scale") else []
    out["relay"] = [x["ratio"] for x in (r.get("relay") or []) if x]
    for variant, services in (("notifications", "notifications"), ("default", "notifications,order-state,inventory")):
        v = _dig(r, "latency", services, "p99_ms")
        out[f"latency-{variant}"] = [v] if v is not None else []
    worst = _dig(r, "retry", "worst")
    out["retry"] = [worst] if worst is not None else []
    front = r.get("frontdoor")
    out["frontdoor"] = [front["requests_per_s"]] if front else []
    out["frontdoor-p99"] = [front["percentiles_ms"]["p99"]] if front else []
    pg = [x for x in (r.get("frontdoor_more") or []) if x and x.get("database") == "postgresql"
          and x.get("mix") == "create"]
    out["frontdoor-pg"] = [x["requests_per_s"] for x in pg]
    out["frontdoor-pg-p99"] = [x["percentiles_ms"]["p99"] for x in pg]
    out["startup"] = list(_dig(r, "startup", "empty_s") or [])
    out["startup-restart"] = list(_dig(r, "startup", "restart_s") or [])
    return out


def summarize(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, values in values_of(r).items():
        label, goal, check, digits, method = GOALS[key]
        row: dict[str, Any] = {"key": key, "label": label, "goal": goal, "method": method, "values": values}
        if values:
            med = statistics.median(values)
            row.update(median=med, min=min(values), max=max(values), met=bool(check(med)))
            spread = f" ({_fmt(min(values), digits)}–{_fmt(max(values), digits)}, n={len(values)})" \
                if len(values) > 1 else ""
            row["shown"] = f"{_fmt(med, digits)}{spread}"
            row["verdict"] = "met" if row["met"] else "MISSED"
        else:
            row.update(median=None, min=None, max=None, met=None, shown="–", verdict="not run")
        if key.startswith("latency-") and values:
            services = "notifications" if key.endswith("notifications") else "notifications,order-state,inventory"
            offered = _dig(r, "latency", services, "offered_per_s") or 0
            target = _dig(r, "sizes", "latency_rate") or 1000
            if offered < 0.9 * target:  # the load generator fell behind: not the rate the goal names
                row["met"] = None
                row["verdict"] = f"not at rate (offered {offered:,.0f}/s)"
        rows.append(row)
    return rows


# -- plot ------------------------------------------------------------------------------------

def write_plot(r: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = {row["key"]: row for row in r["summary"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    # 1. ratios against their goals (higher is better)
    keys = [k for k in ("headline", "paid", "paid-notifications", "parked", "recovery", "quix", "relay")
            if rows.get(k, {}).get("median") is not None]
    goals = {"headline": 0.12, "paid": 0.5, "paid-notifications": 0.8, "parked": 0.8, "recovery": 0.5,
             "quix": 1.0, "relay": 0.5}
    ax = axes[0]
    ys = list(range(len(keys)))
    med = [rows[k]["median"] for k in keys]
    err = [[rows[k]["median"] - rows[k]["min"] for k in keys], [rows[k]["max"] - rows[k]["median"] for k in keys]]
    ax.barh(ys, med, xerr=err, color=["#4c72b0" if rows[k]["met"] else "#c44e52" for k in keys])
    for y, k in zip(ys, keys):
        ax.plot([goals[k], goals[k]], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.set_yticks(ys, keys)
    ax.invert_yaxis()
    ax.set_title("ratio (bar: median, whisker: spread, line: goal)")
    # 2. worker vs bare events/s per pair (medians)
    ax = axes[1]
    pairs = r.get("pairs", {})
    names, wv, bv = [], [], []
    for key in ("headline", "paid", "paid-notifications"):
        ok = _ok(pairs.get(key))
        if ok:
            names.append(key)
            wv.append(statistics.median(p["worker"]["per_s"] for p in ok))
            bv.append(statistics.median(p["bare"]["events_per_s"] for p in ok))
    for key, side in (("parked", "default"), ("parked", "off")):
        ok = _ok(pairs.get(key))
        if ok:
            names.append(f"parked-{side}")
            wv.append(statistics.median(p[side]["worker"]["per_s"] for p in ok))
            bv.append(statistics.median(p[side]["bare"]["events_per_s"] for p in ok))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], wv, width=0.4, label="worker (orders/s for headline)", color="#4c72b0")
    ax.bar([x + 0.2 for x in xs], bv, width=0.4, label="bare loop events/s", color="#999999")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.set_title("throughput, each worker run vs its bare loop")
    ax.legend(fontsize=8)
    # 3. P2 times and sweep times
    ax = axes[2]
    labels, vals = [], []
    rounds = _dig(r, "recovery", "rounds") or []
    if rounds:
        labels += ["healthy: kept", "healthy: wiped"]
        vals += [statistics.median(x["kept_to_healthy_s"] for x in rounds),
                 statistics.median(x["wiped_to_healthy_s"] for x in rounds)]
    for s in _dig(r, "sweep", "sizes") or []:
        live = s["live_keys"]
        labels.append(f"sweep {live / 1e6:g}M live (×10)" if live >= 1_000_000 else f"sweep {live // 1000:,}k live (×10)")
        vals.append(s["median_s"] * 10)
    ax.bar(labels, vals, color=["#55a868", "#dd8452", "#8172b3", "#8172b3"][: len(vals)])
    ax.set_title("seconds (P2 to healthy; sweep ×10)")
    ax.tick_params(axis="x", rotation=20)
    fig.suptitle(("QUICK RUN — " if r.get("quick") else "") + f"commit {(_dig(r, 'git', 'commit') or '?')[:10]}, "
                 f"{r['date']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


# -- markdown ------------------------------------------------------------------------------------

def _pair_table(ok: list[dict[str, Any]], unit: str) -> str:
    lines = [f"| # | first | worker {unit} | worker CPU-s/100k inputs | worker s | bare events/s | bare CPU-s/100k | "
             f"bare s | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(ok, 1):
        w, b = p["worker"], p["bare"]
        lines.append(f"| {i} | {p['first']} | {_fmt(w['per_s'])} | {_fmt(w['cpu_s_per_100k'], 1)} | "
                     f"{_fmt(w['seconds'], 2)} | {_fmt(b['events_per_s'])} | {_fmt(b['cpu_s_per_100k'], 1)} | "
                     f"{_fmt(b['seconds'], 2)} | {_fmt(p['ratio'], 3)} |")
    return "\n".join(lines)


def _counts(w: dict[str, Any]) -> str:
    c = w.get("counts") or {}
    return "; ".join(f"`{k}` {_fmt(int(v))}" for k, v in sorted(c.items())) or "–"


def write_markdown(r: dict[str, Any], path: Path, results_file: Path) -> None:
    """docs/benchmarks.md from a results dict: the header, goals and method, then one
    section per measurement, then the errors."""
    sections = [_md_header(r, results_file), _md_goals(r), _md_method(r), _md_headline(r), _md_floods(r),
                _md_kstreams(r), _md_quix(r), _md_eos(r), _md_parked(r), _md_parked_dlq(r), _md_recovery(r), _md_sweep(r),
                _md_relay(r), _md_frontdoor(r), _md_latency(r), _md_retry(r), _md_scale(r), _md_profiles(r), _md_errors(r)]
    path.write_text("\n".join(line for section in sections for line in section))


def _md_header(r: dict[str, Any], results_file: Path) -> list[str]:
    """Title, the quick-run warning, the command and commit, the machine, the plot."""
    m, g = r["machine"], r["git"]
    quick = r.get("quick")
    out: list[str] = []
    title = "# Benchmarks" + (" — QUICK RUN (small inputs, a smoke test: not the full measurement)" if quick else "")
    out.append(title)
    out.append("")
    if quick:
        out.append("> **Quick run.** Generated by `python -m bench --quick`: inputs are a fraction of the full "
                   "sizes the goals are stated for, and the machine was shared. Run `make bench` "
                   "(optionally `python -m bench --repeat 3`) on a quiet machine for the real figures.")
        out.append("")
    dirty = g.get("dirty_files") or []
    repeat = r.get("repeat", 1)
    command = "python -m bench" + (" --quick" if quick else "") + (f" --repeat {repeat}" if repeat > 1 else "")
    out.append(f"Generated by `{command}` "
               f"on {r['date']} from commit `{g.get('commit') or '?'}` ({g.get('subject', '')})"
               + (f", with uncommitted changes in {', '.join(f'`{d}`' for d in dirty[:8])}"
                  + (" …" if len(dirty) > 8 else "") if dirty else "") + ".")
    out.append("")
    out.append(f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model') or '?'}), {_fmt(m.get('memory_gib'), 1)} GiB, "
               f"{m.get('platform')}, Python {m.get('python')}; load average at start "
               f"{', '.join(f'{x:.2f}' for x in m.get('load_at_start') or [])}. Brokers: "
               + "; then ".join(BROKER_TEXT.get(b, b) for b in [r.get("broker", "tansu"), *(r.get("other_brokers") or {})])
               + f", a fresh one per measurement; the sections below show the first. Whole run: {_fmt(r.get('seconds'), 0)} s. "
               f"Raw numbers: [`{results_file}`](../{results_file}).")
    out.append("")
    out.append("![benchmarks](benchmarks.png)")
    out.append("")
    return out


def _md_goals(r: dict[str, Any]) -> list[str]:
    """The goals table: each goal's median and verdict, per broker."""
    out: list[str] = []
    out.append("## Goals")
    out.append("")
    k = r.get("repeat", 1)
    out.append(f"Measured = the median over {k} run{'s' if k > 1 else ''} of each pair"
               + (" (min–max, n)" if k > 1 else "") + "; the verdict is on the median.")
    out.append("")
    others = r.get("other_brokers") or {}
    broker = BROKER_NAMES.get(r.get("broker", "tansu"), r.get("broker"))
    extra = {name: {row["key"]: row for row in (o.get("summary") or summarize(o))} for name, o in others.items()}
    heads = "".join(f" {BROKER_NAMES.get(n, n)}: measured | verdict |" for n in extra)
    out.append(f"| what | goal | {broker}: measured | verdict |{heads} method |")
    out.append("|---|---|---|---|" + "---|---|" * len(extra) + "---|")
    for row in r["summary"]:
        cells = "".join(f" {x.get(row['key'], {}).get('shown', '–')} | {x.get(row['key'], {}).get('verdict', '–')} |"
                        for x in extra.values())
        out.append(f"| {row['label']} | {row['goal']} | {row['shown']} | {row['verdict']} |{cells} {row['method']} |")
    out.append("")
    return out


def _md_method(r: dict[str, Any]) -> list[str]:
    """How pairs are run and how the worker side is clocked."""
    s = r["sizes"]
    out: list[str] = []
    out.append("## Method")
    out.append("")
    out.append(
        "**Pairs.** Every worker measurement is paired with a run of the bare loop "
        "(`bench/bare_loop.py`: aiokafka consume 500 → `json` → rocksdict dedup → produce with `acks=\"all\"` → "
        "await the acks → write batch → commit) on its own fresh broker, right before or after it (worker "
        "first on even repeats, bare loop first on odd ones), and the ratio is computed within the pair. "
        f"The bare loop always reads the same flood: {_fmt(s['flood_events'])} `OrderPaid` over "
        f"{_fmt(s['flood_distinct'])} ids; its clock runs from its first fetched record to the acks and "
        "commit of its last batch, once it has consumed every record. `--repeat K` runs every pair K times.")
    out.append("")
    out.append(
        "**Worker side.** The real `faust -A streams worker` (harness/worker.py) on a fresh broker; "
        "every input is produced before it starts. The clock starts when `/health` first answers 200 "
        "(polled every 50 ms) and stops at the first `/metrics` poll whose "
        "`event_processed_total` counts show that every service reading the inputs processed all of "
        "them — a condition, never an idle window. Polls are spaced by half the estimated time left (50 ms "
        "to 0.5 s; a scrape costs the worker ~4 ms of CPU with every service), so the end is seen within "
        "~50 ms. CPU is the worker process's user + system time over that span, per 100k input records.")
    out.append("")
    return out


def _md_headline(r: dict[str, Any]) -> list[str]:
    """Section 1: the whole worker over the full lifecycle."""
    s = r["sizes"]
    ok = _ok(r.get("pairs", {}).get("headline"))
    out: list[str] = []
    out.append(f"## 1. Headline — the whole worker over the full lifecycle ({_fmt(s['orders'])} orders)")
    out.append("")
    if ok:
        w = ok[0]["worker"]
        out.append(f"Default `SERVICES` (notifications, order-state, inventory). Inputs: stock `set` for 5 SKUs "
                   f"({_fmt(w['stock_total'])} units against a demand of {_fmt(w['demand_total'])}), then "
                   f"{_fmt(s['orders'])} `OrderCreated` (1–2 SKUs each), then {_fmt(s['orders'])} `OrderPaid`. "
                   f"Rate = orders ÷ seconds. First run: {_fmt(w['reserved'])} reserved, "
                   f"{_fmt(w['rejected'])} rejected, {_fmt(w['steps'])} processing steps counted by "
                   f"`event_processed_total` ({_fmt(w['steps'] / s['orders'], 1)} per order).")
        out.append("")
        out.append(_pair_table(ok, "orders/s"))
        out.append("")
        out.append(f"Counters at the end of the first run: {_counts(w)}.")
    else:
        out.append("Not run or failed (see Errors).")
    out.append("")
    return out


def _md_floods(r: dict[str, Any]) -> list[str]:
    """Section 2: the `OrderPaid` floods, default `SERVICES` and notifications only."""
    s = r["sizes"]
    pairs = r.get("pairs", {})
    out: list[str] = []
    out.append(f"## 2. `OrderPaid` flood ({_fmt(s['flood_events'])} events over {_fmt(s['flood_distinct'])} ids, "
               "no `OrderCreated`)")
    out.append("")
    for key, title in (("paid", "Default `SERVICES`"), ("paid-notifications", "`SERVICES=notifications`")):
        ok = _ok(pairs.get(key))
        out.append(f"**{title}.**")
        out.append("")
        if ok:
            out.append(_pair_table(ok, "events/s"))
            out.append("")
            out.append(f"Counters at the end of the first run: {_counts(ok[0]['worker'])}.")
        else:
            out.append("Not run or failed (see Errors).")
        out.append("")
    return out


def _md_kstreams(r: dict[str, Any]) -> list[str]:
    """Section 2's Kafka Streams reference, both guarantees."""
    ks = r.get("kstreams_status")
    ok = [p for p in _ok(r.get("pairs", {}).get("paid-notifications")) if "kstreams_at_least_once" in p]
    out: list[str] = []
    out.append("**Kafka Streams (reference, same broker).** ")
    if ok:
        out.append("")
        out.append("| # | guarantee | Kafka Streams events/s | CPU-s/100k | worker (notifications) ÷ Kafka Streams "
                   "| Kafka Streams ÷ its pair's bare loop | JVM start → first record (s) |")
        out.append("|---|---|---|---|---|---|---|")
        for i, p in enumerate(ok, 1):
            for g in ("at_least_once", "exactly_once_v2"):
                k = p.get(f"kstreams_{g}")
                if k:
                    out.append(f"| {i} | `{g}` | {_fmt(k['events_per_s'])} | {_fmt(k['cpu_s_per_100k'], 1)} | "
                               f"{_fmt(p[f'worker_over_kstreams_{g}'], 3)} | {_fmt(p[f'kstreams_{g}_over_bare'], 3)} | "
                               f"{_fmt(k.get('start_to_first_record_s'), 1)} |")
        out.append("")
        out.append("`bench/kafka-streams/` (Maven, built on first use; jars in its ignored `target/`): the "
                   "notifications contract with the Processor API, one stream thread, `acks=all`. Its clock: "
                   "first record processed → the end of `close()` (every forward flushed and acknowledged, "
                   "offsets committed); CPU is the JVM's over that span, JIT warm-up included.")
    elif ks and not ks.get("available"):
        out.append(f"Not run: {ks.get('reason')}")
    else:
        out.append("Not run in this invocation (Kafka only).")
    out.append("")
    return out


def _md_eos(r: dict[str, Any]) -> list[str]:
    """Section 2's exactly-once cost: the default flood under each guarantee."""
    ok = _ok(r.get("pairs", {}).get("eos"))
    out = ["**`PROCESSING_GUARANTEE=exactly_once` ÷ `at_least_once`** (default `SERVICES`, same flood, a fresh "
           "Kafka broker each).", ""]
    if not ok:
        out += ["Not run in this invocation (Kafka only).", ""]
        return out
    out += ["| # | first | BATCH_SIZE | exactly_once events/s | CPU-s/100k | at_least_once events/s | CPU-s/100k "
            "| ratio |", "|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(ok, 1):
        e, a = p["exactly_once"], p["at_least_once"]
        out.append(f"| {i} | {p['first']} | {p['batch_size']} | {_fmt(e['per_s'])} | {_fmt(e['cpu_s_per_100k'], 1)} "
                   f"| {_fmt(a['per_s'])} | {_fmt(a['cpu_s_per_100k'], 1)} | {_fmt(p['ratio'], 3)} |")
    out += ["", "Under `exactly_once` each batch is one transaction per input partition (a producer each); "
            "the CPU column is the worker's own cost per event, the ratio the wall-clock throughput.", ""]
    return out


def _md_quix(r: dict[str, Any]) -> list[str]:
    """Section 2's Quix Streams reference."""
    qs = r.get("quix_status")
    ok = [p for p in _ok(r.get("pairs", {}).get("paid-notifications")) if "quix" in p]
    out: list[str] = []
    out.append("**Quix Streams (reference).** ")
    if ok:
        out.append("")
        out.append("| # | Quix events/s | Quix CPU-s/100k | worker (notifications) ÷ Quix | Quix ÷ its pair's bare loop |")
        out.append("|---|---|---|---|---|")
        for i, p in enumerate(ok, 1):
            out.append(f"| {i} | {_fmt(p['quix']['events_per_s'])} | {_fmt(p['quix']['cpu_s_per_100k'], 1)} | "
                       f"{_fmt(p['worker_over_quix'], 3)} | {_fmt(p['quix_over_bare'], 3)} |")
        out.append("")
        out.append("Quix 3.28.1 needs `pydantic<2.14` and `pydantic-settings<2.16`; the project's venv has newer "
                   "ones, so Quix runs from a venv of its own (`bench/quix.py`, made on first use) rather than "
                   "the `bench` extra, which would downgrade the worker's dependencies. Quix's clock: first "
                   "consumed record → its final checkpoint (bench/README-quix.md).")
    elif qs and not qs.get("available"):
        out.append(f"Not run: {qs.get('reason')}")
    else:
        out.append("Not run in this invocation.")
    out.append("")
    return out


def _md_parked(r: dict[str, Any]) -> list[str]:
    """Section 3: the parked flood, order-state on and off."""
    s = r["sizes"]
    ok = _ok(r.get("pairs", {}).get("parked"))
    out: list[str] = []
    out.append(f"## 3. Parked flood ({_fmt(s['parked'])} `OrderPaid`, distinct ids, no `OrderCreated`)")
    out.append("")
    if ok:
        out.append("| # | default events/s | its bare | order-state off events/s | its bare | raw ratio | "
                   "ratio of the bare-normalised rates |")
        out.append("|---|---|---|---|---|---|---|")
        for i, p in enumerate(ok, 1):
            out.append(f"| {i} | {_fmt(p['default']['worker']['per_s'])} | {_fmt(p['default']['bare']['events_per_s'])} | "
                       f"{_fmt(p['off']['worker']['per_s'])} | {_fmt(p['off']['bare']['events_per_s'])} | "
                       f"{_fmt(p['raw_ratio'], 3)} | {_fmt(p['ratio'], 3)} |")
        out.append("")
        out.append(f"Counters at the end of the first default run: {_counts(ok[0]['default']['worker'])}.")
    else:
        out.append("Not run or failed (see Errors).")
    out.append("")
    return out


def _md_parked_dlq(r: dict[str, Any]) -> list[str]:
    """Section 3's epilogue: the parked orders' dead letters after ``PARK_TIMEOUT``."""
    d = r.get("parked_dlq")
    if not d:
        return []
    return [f"**After `PARK_TIMEOUT` ({d['park_timeout_s']:g} s, this run only).** "
            f"{_fmt(d['paid_orders_dead_lettered'])} of {_fmt(d['expected_orders'])} parked orders' `OrderPaid` "
            f"are in `order-state.dlq` as `out_of_order_timeout` "
            f"({'every one' if d['all_in_dlq'] else 'NOT every one'}); letters by reason: "
            f"{', '.join(f'`{k}` {_fmt(v)}' for k, v in d['by_reason'].items()) or '–'}; "
            f"timeout letters by source topic: "
            f"{', '.join(f'`{k}` {_fmt(v)}' for k, v in d['timeout_letters_by_source'].items()) or '–'} "
            f"(each order also parked the `NotificationSent` derived from its `OrderPaid`). "
            f"First letter {_fmt(d['first_letter_after_ready_s'], 1)} s and last letter "
            f"{_fmt(d['last_letter_after_ready_s'], 1)} s after the worker was ready; the last one "
            f"{_fmt(d['last_letter_after_flood_done_s'], 1)} s after the flood was processed."
            + (f" The flood took longer than `PARK_TIMEOUT`, so expiries overlapped the throughput "
               f"measurement ({_fmt(int(d['expired_during_measurement']))} letters before it ended)."
               if d.get("overlapped") else ""),
            ""]


def _md_recovery(r: dict[str, Any]) -> list[str]:
    """Section 4 (P2): table recovery, kept and wiped data dir, against a raw read."""
    s = r["sizes"]
    rec = r.get("recovery")
    out: list[str] = []
    out.append(f"## 4. P2 — table recovery ({_fmt(s['recovery_keys'])} dedup keys, 4 partitions)")
    out.append("")
    if rec:
        b = rec["build"]
        out.append(f"Built by the real worker (`SERVICES=notifications`) from {_fmt(b['keys'])} distinct `OrderPaid` "
                   f"in {_fmt(b['build_s'], 1)} s ({_fmt(b['build_events_per_s'])} events/s); its SIGTERM stop took "
                   f"{_fmt(_dig(b, 'stop', 'seconds'), 1)} s (exit code {_fmt(_dig(b, 'stop', 'rc'))}). The first "
                   f"start after it (data dir kept, not part of the goal) took "
                   f"{_fmt(b.get('first_restart_to_healthy_s'), 1)} s to healthy, so that both timed starts "
                   "below follow the stop of an idle worker. Then, per round: "
                   "SIGTERM, start with the data dir kept; SIGTERM, wipe `DATA_DIR`, start (alternating which "
                   "comes first); then a group-less aiokafka read of "
                   "`order-streams-notifications-dedup-changelog` with the loader's fetch sizes (16 MiB per "
                   "partition, 20 ms wait) and with aiokafka's defaults.")
        out.append("")
        out.extend(_recovery_rounds(rec["rounds"]))
    else:
        out.append("Not run or failed (see Errors).")
    out.append("")
    return out


def _recovery_rounds(rounds: list[dict[str, Any]]) -> list[str]:
    """Section 4's table, a row per round, and what went short in any round."""
    out: list[str] = []
    out.append("| # | bulk loader records | loader s | loader records/s | raw records/s (loader fetch) | "
               "raw records/s (defaults) | ratio | ratio vs default fetch | kept → healthy s | "
               "wiped → healthy s | wiped − kept s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, x in enumerate(rounds, 1):
        bl = x.get("bulk") or {}
        out.append(f"| {i} | {_fmt(bl.get('records'))} | {_fmt(bl.get('seconds'), 1)} | "
                   f"{_fmt(bl.get('records_per_s'))} | {_fmt(x['raw']['records_per_s'])} | "
                   f"{_fmt(x['raw_default_fetch']['records_per_s'])} | {_fmt(x['ratio'], 3)} | "
                   f"{_fmt(x['ratio_default_fetch'], 3)} | {_fmt(x['kept_to_healthy_s'], 1)} | "
                   f"{_fmt(x['wiped_to_healthy_s'], 1)} | {_fmt(x['wiped_minus_kept_s'], 1)} |")
    if any(x.get("bulk_stopped_early") for x in rounds):
        out.append("")
        out.append("The bulk loader stopped at its time budget in at least one round; Faust replayed the rest.")
    if any(x.get("bulk") is None for x in rounds):
        out.append("")
        out.append("No `bulk recovery:` line was found in at least one wiped start's log.")
    return out


def _md_sweep(r: dict[str, Any]) -> list[str]:
    """Section 5: the dedup TTL sweep's cost against the table's size."""
    sw = r.get("sweep")
    out: list[str] = []
    out.append("## 5. Sweep cost — dedup TTL sweep vs table size")
    out.append("")
    if sw:
        out.append("The real `Pipeline` + `NotificationsService` over `bench/sweep.py`'s `RocksStore` (rocksdict, "
                   "the read/scan/write semantics of `TableStore` without the changelog), markers and their "
                   "time-index entries written through the pipeline's `Transaction` as `_mark` writes them, "
                   "memtables flushed; then `pipeline.maintain(partitions)` is timed until every expired key "
                   "is gone. Each round adds new expired keys (earlier rounds' index tombstones stay).")
        out.append("")
        out.append("| live keys | expired keys | rounds | seconds per round | median s | removed | left |")
        out.append("|---|---|---|---|---|---|---|")
        for x in sw["sizes"]:
            out.append(f"| {_fmt(x['live_keys'])} | {_fmt(x['expired_keys'])} | {x['rounds']} | "
                       f"{', '.join(f'{t:.3f}' for t in x['seconds'])} | {_fmt(x['median_s'], 3)} | "
                       f"{', '.join(_fmt(v) for v in x['removed'])} | {_fmt(x['expired_left'])} |")
        out.append("")
        out.append(f"Ratio of the medians (largest ÷ smallest table): {_fmt(sw['ratio'], 2)}.")
    else:
        out.append("Not run or failed (see Errors).")
    out.append("")
    return out


def _md_frontdoor(r: dict[str, Any]) -> list[str]:
    """Every front-door run: SQLite and PostgreSQL, POST /orders and create + pay."""
    runs = [x for x in [r.get("frontdoor"), *(r.get("frontdoor_more") or [])] if x]
    out = ["## Front door — wrk on the order service", ""]
    if not runs:
        return [*out, "Not run or failed (see Errors).", ""]
    out.append("| database | wrk sends | requests/s | p50 ms | p99 ms | not 201/202 | socket errors | "
               "service CPU-s/1k | load before → after |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for x in runs:
        p = x["percentiles_ms"]
        mix = "create + pay" if x.get("mix") == "create-pay" else "`POST /orders`"
        out.append(f"| {x.get('database', 'sqlite')} | {mix} | {_fmt(x['requests_per_s'])} | {_fmt(p['p50'], 1)} | "
                   f"{_fmt(p['p99'], 1)} | {x['non_2xx']} | {x['socket_errors']} | "
                   f"{_fmt(x['service_cpu_s_per_1k'], 2)} | {x['load_before'][0]} → {x['load_after'][0]} |")
    out.append("")
    out.append("wrk -t2 -c64 for 15 s (5 s QUICK) after a 2 s warm-up (bench/frontdoor.py); create + pay: each 201's order "
               "is paid by a later request. Every 201 is checked to be a committed row, every 202 a paid one.")
    out.append("")
    return out


def _md_relay(r: dict[str, Any]) -> list[str]:
    """P3: the outbox relay against a raw producer."""
    s = r["sizes"]
    rel = [x for x in (r.get("relay") or []) if x]
    out: list[str] = []
    out.append("## P3 — outbox relay vs raw producer")
    out.append("")
    if rel:
        out.append("| # | relay rows/s | relay CPU-s/100k | raw producer rows/s | ratio |")
        out.append("|---|---|---|---|---|")
        for i, x in enumerate(rel, 1):
            out.append(f"| {i} | {_fmt(x['relay']['rows_per_s'])} | {_fmt(x['relay']['cpu_s_per_100k'], 1)} | "
                       f"{_fmt(x['raw_producer']['rows_per_s'])} | {_fmt(x['ratio'], 3)} |")
        out.append("")
        out.append(f"{_fmt(s['relay_rows'])} rows; relay on SQLite, batches of 500, up to 4 in flight "
                   "(default `RELAY_IN_FLIGHT`), acks awaited, rows marked; both producers started before "
                   "the clock starts; raw aiokafka producer: the same records, acks awaited per 500, no database.")
    else:
        out.append("Not run or failed (see Errors).")
    out.append("")
    return out


def _md_latency(r: dict[str, Any]) -> list[str]:
    """P4: end-to-end latency at 1,000 orders/s, per ``SERVICES``."""
    lat = r.get("latency") or {}
    out: list[str] = []
    out.append("## P4 — end-to-end latency at 1,000 orders/s")
    out.append("")
    if any(lat.values()):
        out.append("Order committed (outbox row, SQLite, relay in the committing process) → `NotificationSent` "
                   "on the broker; worker with `FETCH_MAX_WAIT=0.01`; `OrderPaid` only. One order per "
                   "transaction while the generator keeps to the schedule; when it falls behind, the orders due "
                   "by then share a transaction (at most 10) so that it can catch up, and each order's latency "
                   "counts from its transaction's commit. Below 90 % of the target rate the verdict is "
                   "\"not at rate\": the generator (one aiosqlite call per row, the relay in the same process) "
                   "was the limit, not the worker.")
        out.append("")
        out.append("| `SERVICES` | offered/s | orders | orders per transaction | received | p50 ms | p99 ms | max ms | "
                   "relay p50/p99 ms | worker p50/p99 ms |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for services, x in lat.items():
            if x:
                out.append(f"| {services} | {_fmt(x['offered_per_s'])} | {_fmt(x['orders'])} | "
                           f"{_fmt(x.get('orders_per_transaction'), 2)} | {_fmt(x['received'])} | "
                           f"{_fmt(x['p50_ms'], 1)} | {_fmt(x['p99_ms'], 1)} | {_fmt(x['max_ms'], 1)} | "
                           f"{_fmt(x['relay_p50_ms'], 1)} / {_fmt(x['relay_p99_ms'], 1)} | "
                           f"{_fmt(x['worker_p50_ms'], 1)} / {_fmt(x['worker_p99_ms'], 1)} |")
    else:
        out.append("Not run or failed (see Errors).")
    out.append("")
    return out


def _md_retry(r: dict[str, Any]) -> list[str]:
    """P5: the retry tiers' observed delays against the configured ones."""
    rt = r.get("retry")
    out: list[str] = []
    out.append("## P5 — retry delays")
    out.append("")
    if rt:
        out.append(f"{rt['keys']} keys, the gateway stub fails each 3 times; {rt['sent']} `NotificationSent` arrived.")
        out.append("")
        out.append("| tier | configured (s) | observed mean (s) | min | max | mean / configured |")
        out.append("|---|---|---|---|---|---|")
        for t in rt["tiers"]:
            out.append(f"| {t['tier']} | {t['configured_s']} | {t['mean_s']:.3f} | {t['min_s']:.3f} | "
                       f"{t['max_s']:.3f} | {t['mean_over_configured']:.3f} |")
    else:
        out.append("Not run or failed (see Errors).")
    out.append("")
    return out


def _md_scale(r: dict[str, Any]) -> list[str]:
    """Scale over cores: one worker process and two (bench/scale.py)."""
    sc = r.get("scale")
    out = ["## Scale over cores", ""]
    if not sc:
        return out + ["Not run in this invocation (`--only scale`).", ""]
    out += ["| workers | events/s | seconds | CPU share of wall time, per worker |", "|---|---|---|---|"]
    for run in (sc["one"], sc["two"]):
        shares = ", ".join(f"{s:.0%}" for s in run["cpu_share_of_wall"])
        out.append(f"| {run['workers']} | {_fmt(run['per_s'])} | {_fmt(run['seconds'], 2)} | {shares} |")
    out += ["", f"Factor {sc['factor']:.2f}. Two cores hold the broker, the producer of the flood and the "
            "workers: a factor well under 2 with each worker below 100 % of a core means the ceiling is the "
            "machine, not the group.", ""]
    return out


def _md_profiles(r: dict[str, Any]) -> list[str]:
    """Where the time goes: the py-spy runs (bench.profile), one table pair each."""
    profiles = r.get("profiles") or {}
    out = ["## Where the time goes (py-spy)", ""]
    if not profiles:
        return out + ["Not run in this invocation (`--only profile`; needs py-spy from the bench extra).", ""]
    out += ["A run of its own per measurement (no ratio above comes from it): `py-spy record --nonblocking` "
            "at 100 Hz on the worker process over the measured span, idle samples left out, so the shares "
            "are of the worker's busy time. Time inside a C extension is charged to the Python function "
            "that called it.", ""]
    titles = {"paid-notifications": "`OrderPaid` flood, `SERVICES=notifications`",
              "paid": "`OrderPaid` flood, default `SERVICES`", "headline": "Headline: the full lifecycle"}
    for name, p in profiles.items():
        out += [f"**{titles.get(name, name)}** — {_fmt(p['samples'])} samples, {_fmt(p['per_s'])}/s while sampled.", "",
                "| area | share |", "|---|---|"]
        out += [f"| {area} | {share:.1%} |" for area, share in p["areas"]]
        out += ["", "| function (innermost Python frame) | self share |", "|---|---|"]
        out += [f"| `{fn}` | {share:.1%} |" for fn, share in p["functions"]]
        out.append("")
    return out


def _md_errors(r: dict[str, Any]) -> list[str]:
    """The last line of each measurement's error, if any failed."""
    errors = r.get("errors") or {}
    if not errors:
        return []
    out = ["## Errors", ""]
    for name, text in errors.items():
        out.append(f"- **{name}**: `{text.splitlines()[-1][:400]}`")
    out.append("")
    return out
