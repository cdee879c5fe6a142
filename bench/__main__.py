"""``python -m bench`` (or ``make bench``): every measurement side by side, in one run.

Each worker measurement is paired with a bare-loop run on its own fresh broker right
before or after it (alternating, so a drifting machine favours neither side) and the
ratio is computed within the pair; ``--repeat K`` runs every pair K times and reports
the median ratio and the spread. Writes ``bench/results/<date>[-quick].json``,
``docs/benchmarks.md`` and ``docs/benchmarks.png`` (only for a run of everything;
``--only`` runs write the JSON alone unless ``--write-docs``).

    python -m bench                    # full sizes (~9 minutes on 2 cores)
    python -m bench --quick            # small inputs, labelled QUICK in the report
    python -m bench --repeat 3         # every pair 3 times: median and spread
    python -m bench --only headline,p2 # a subset (names below)
    python -m bench --render bench/results/<file>.json   # the report again, nothing measured
    python -m bench --brokers tansu     # only the embedded broker (default: kafka,tansu with Java 17+)

Every measurement runs on the first broker of ``--brokers`` (Apache Kafka by default:
the broker users run), then the whole set again on each further one; the report's goal
table has a column per broker. The Kafka Streams reference runs on Kafka only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench.common as common
from bench import pairs
from bench.common import ROOT, git_commit, machine
from bench.report import summarize, write_markdown, write_plot

#: --only names (and the old P-numbers as aliases)
NAMES = ("headline", "paid", "paid-notifications", "kstreams", "quix", "parked", "recovery", "sweep", "relay",
         "latency", "retry", "startup", "frontdoor", "eos", "profile", "scale")
ALIASES = {"p1": ("paid", "paid-notifications", "quix", "kstreams"), "p2": ("recovery",), "p3": ("relay",),
           "p4": ("latency",), "p5": ("retry",), "lifecycle": ("headline",), "p2-sweep": ("sweep",)}


@dataclass
class Sizes:
    flood_events: int
    flood_distinct: int
    orders: int
    parked: int
    park_timeout: float
    recovery_keys: int
    sweep_live: tuple[int, int]
    sweep_expired: int
    relay_rows: int
    latency_seconds: float
    latency_rate: int = 1000
    retry_keys: int = 20
    retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0)


FULL = Sizes(flood_events=100_000, flood_distinct=80_000, orders=20_000, parked=80_000, park_timeout=20.0,
             recovery_keys=1_000_000, sweep_live=(100_000, 1_000_000), sweep_expired=10_000,
             relay_rows=20_000, latency_seconds=15)
QUICK = Sizes(flood_events=20_000, flood_distinct=16_000, orders=2_000, parked=10_000, park_timeout=20.0,
              recovery_keys=100_000, sweep_live=(100_000, 1_000_000), sweep_expired=10_000,
              relay_rows=5_000, latency_seconds=5)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def guarded(results: dict[str, Any], name: str, coro: Any) -> Any:
    """Run one measurement; an error is recorded (and printed), the run goes on."""
    t = time.perf_counter()
    try:
        out = await coro
        log(f"  {name}: done in {time.perf_counter() - t:.0f}s")
        return out
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        log(f"  {name}: FAILED: {exc!r}")
        results.setdefault("errors", {})[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-3000:]
        traceback.print_exc()
        return None


async def paired(results: dict[str, Any], name: str, r: int, worker: Any, bare: Any, *,
                 flip: bool = False) -> dict[str, Any] | None:
    """Worker and bare loop back to back (worker first on even repeats, bare first on
    odd ones; ``flip`` the other way round); None when either side failed."""
    worker_first = (r % 2 == 0) != flip
    if worker_first:
        w = await guarded(results, f"{name}[{r}] worker", worker())
        b = await guarded(results, f"{name}[{r}] bare", bare()) if w else None
    else:
        b = await guarded(results, f"{name}[{r}] bare", bare())
        w = await guarded(results, f"{name}[{r}] worker", worker()) if b else None
    if not (w and b):
        return None
    return {"first": "worker" if worker_first else "bare", "worker": w, "bare": b,
            "ratio": w["per_s"] / b["events_per_s"]}


def default_brokers() -> str:
    from streams.broker.kafka import KafkaSetupError, check_java

    try:
        check_java()
    except KafkaSetupError as exc:
        log(f"bench: {exc}: Tansu only")
        return "tansu"
    return "kafka,tansu"


async def run_brokers(sizes: Sizes, quick: bool, repeat: int, only: set[str], brokers: list[str]) -> dict[str, Any]:
    """Everything on ``brokers[0]`` (the results' top level), then on each further broker
    (``results["other_brokers"][name]``, same shape)."""
    results: dict[str, Any] = {}
    for i, broker in enumerate(brokers):
        common.BROKER = broker
        log(f"bench: broker {broker} ({i + 1} of {len(brokers)})")
        got = await run_all(sizes, quick, repeat, only)
        got["broker"] = broker
        if i == 0:
            results = got
        else:
            results.setdefault("other_brokers", {})[broker] = got
            results["seconds"] = results.get("seconds", 0) + got.get("seconds", 0)
    return results


async def run_all(sizes: Sizes, quick: bool, repeat: int, only: set[str]) -> dict[str, Any]:
    """Every measurement in ``only`` on the current broker (``common.BROKER``): the paired
    ones ``repeat`` times (:func:`run_round`), then the others once (:func:`run_unpaired`)."""
    work = Path(tempfile.mkdtemp(prefix="order-streams-bench-"))
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "repeat": repeat, "only": sorted(only) if only != set(NAMES) else None,
        "git": git_commit(), "machine": machine(), "sizes": asdict(sizes), "workdir": str(work),
        "pairs": {}, "errors": {}, "broker": common.BROKER,
    }
    log(f"bench: {'QUICK' if quick else 'full'} sizes, repeat {repeat}; logs under {work}")
    kstreams_ready = await prepare_kstreams(results, only)
    quix_python = await prepare_quix(results, only)
    t_start = time.perf_counter()
    for r in range(repeat):
        await run_round(results, sizes, r, repeat, only, work, kstreams_ready=kstreams_ready, quix_python=quix_python)
    await run_unpaired(results, sizes, quick, repeat, only, work)
    results["seconds"] = time.perf_counter() - t_start
    results["summary"] = summarize(results)
    return results


async def prepare_kstreams(results: dict[str, Any], only: set[str]) -> bool:
    """Whether the Kafka Streams reference can run (built with Maven on first use; Kafka only)."""
    if not ("kstreams" in only and common.BROKER == "kafka"):
        return False
    from bench import kstreams

    log("Kafka Streams reference: building bench/kafka-streams (Maven, first use only) …")
    kstreams_ready, why = await asyncio.to_thread(kstreams.build)
    results["kstreams_status"] = {"available": kstreams_ready, "reason": why}
    if why:
        log(f"  Kafka Streams not available: {why}")
    return kstreams_ready


async def prepare_quix(results: dict[str, Any], only: set[str]) -> Any:
    """The Python of Quix Streams' own venv (made on first use), or None."""
    if "quix" not in only:
        return None
    from bench.quix import quix_python as find

    log("Quix Streams: its own venv …")
    quix_python, why = await asyncio.to_thread(find)
    results["quix_status"] = {"available": quix_python is not None, "reason": why}
    if why:
        log(f"  Quix not available: {why}")
    return quix_python


async def run_round(results: dict[str, Any], sizes: Sizes, r: int, repeat: int, only: set[str], work: Path, *,
                    kstreams_ready: bool, quix_python: Any) -> None:
    """Round ``r`` of the paired measurements, each worker run beside a bare loop."""
    n, distinct = sizes.flood_events, sizes.flood_distinct

    def bare() -> Any:
        return pairs.bare(n, distinct)

    if "headline" in only:
        log(f"[{r + 1}/{repeat}] headline: whole worker, default SERVICES, {sizes.orders:,} orders, full lifecycle")
        got = await paired(results, "headline", r, lambda: pairs.lifecycle(sizes.orders, work), bare)
        results["pairs"].setdefault("headline", []).append(got)
    if "paid" in only:
        log(f"[{r + 1}/{repeat}] OrderPaid flood, default SERVICES ({n:,} over {distinct:,} ids)")
        got = await paired(results, "paid", r,
                           lambda: pairs.paid_flood(n, distinct, pairs.DEFAULT_SERVICES, work), bare)
        results["pairs"].setdefault("paid", []).append(got)
    if "paid-notifications" in only or "quix" in only or "kstreams" in only:
        log(f"[{r + 1}/{repeat}] OrderPaid flood, SERVICES=notifications"
            + (" (+ Quix Streams)" if quix_python else "") + (" (+ Kafka Streams)" if kstreams_ready else ""))
        got = await paired(results, "paid-notifications", r,
                           lambda: pairs.paid_flood(n, distinct, "notifications", work, name="paid-n"), bare)
        if got and kstreams_ready:
            await add_kstreams(results, got, r, n, distinct)
        if got and quix_python:
            await add_quix(results, got, r, n, distinct, quix_python)
        results["pairs"].setdefault("paid-notifications", []).append(got)
    if "parked" in only:
        await parked_round(results, sizes, r, repeat, work, bare)
    if "eos" in only and common.BROKER == "kafka":
        await eos_round(results, sizes, r, repeat, work)
    if "relay" in only:
        log(f"[{r + 1}/{repeat}] P3 outbox relay vs raw producer ({sizes.relay_rows:,} rows)")
        results.setdefault("relay", []).append(await guarded(results, f"relay[{r}]",
                                                             pairs.relay(sizes.relay_rows, work)))


async def add_kstreams(results: dict[str, Any], got: dict[str, Any], r: int, n: int, distinct: int) -> None:
    """Kafka Streams on the same flood, both guarantees, beside the notifications pair ``got``."""
    from bench import kstreams

    for guarantee in ("at_least_once", "exactly_once_v2"):
        k = await guarded(results, f"kstreams {guarantee}[{r}]", kstreams.run(n, distinct, guarantee))
        if k:
            got[f"kstreams_{guarantee}"] = k
            got[f"worker_over_kstreams_{guarantee}"] = got["worker"]["per_s"] / k["events_per_s"]
            got[f"kstreams_{guarantee}_over_bare"] = k["events_per_s"] / got["bare"]["events_per_s"]


async def add_quix(results: dict[str, Any], got: dict[str, Any], r: int, n: int, distinct: int,
                   quix_python: Any) -> None:
    """Quix Streams on the same flood, beside the notifications pair ``got``."""
    q = await guarded(results, f"quix[{r}]", pairs.quix(n, distinct, quix_python))
    if q:
        got["quix"] = q
        got["worker_over_quix"] = got["worker"]["per_s"] / q["events_per_s"]
        got["quix_over_bare"] = q["events_per_s"] / got["bare"]["events_per_s"]


async def parked_round(results: dict[str, Any], sizes: Sizes, r: int, repeat: int, work: Path, bare: Any) -> None:
    """The parked flood with order-state on and off, each paired; the first round also
    checks the parked orders' dead letters after ``PARK_TIMEOUT``."""
    log(f"[{r + 1}/{repeat}] parked flood: {sizes.parked:,} OrderPaid, no OrderCreated "
        f"(PARK_TIMEOUT {sizes.park_timeout:g}s{' + the DLQ check' if r == 0 else ''})")
    p = sizes.parked
    check = pairs.dlq_check(p, sizes.park_timeout) if r == 0 else None
    env = {"park_timeout": str(sizes.park_timeout)}
    on = await paired(results, "parked-default", r,
                      lambda: pairs.paid_flood(p, p, pairs.DEFAULT_SERVICES, work, env=env, after=check,
                                               name="parked-all"), bare)
    off = await paired(results, "parked-off", r,
                       lambda: pairs.paid_flood(p, p, "notifications,inventory", work, env=env,
                                                name="parked-off"), bare, flip=True)
    got = None
    if on and off:
        got = {"default": on, "off": off, "raw_ratio": on["worker"]["per_s"] / off["worker"]["per_s"],
               "ratio": on["ratio"] / off["ratio"]}
    results["pairs"].setdefault("parked", []).append(got)
    if r == 0 and on and "dlq" in on["worker"]:
        results["parked_dlq"] = on["worker"]["dlq"]


async def eos_round(results: dict[str, Any], sizes: Sizes, r: int, repeat: int, work: Path) -> None:
    """The ``OrderPaid`` flood, default ``SERVICES``, under ``exactly_once`` beside the same
    flood under ``at_least_once`` (Kafka only: Tansu has no transactions), alternating
    which runs first; the ratio is exactly_once events/s ÷ at_least_once events/s."""
    n, distinct = sizes.flood_events, sizes.flood_distinct
    log(f"[{r + 1}/{repeat}] exactly_once ÷ at_least_once: OrderPaid flood, default SERVICES "
        f"({n:,} over {distinct:,} ids, BATCH_SIZE {EOS_BATCH_SIZE})")

    def flood(guarantee: str) -> Any:
        env = {"processing_guarantee": guarantee, "batch_size": str(EOS_BATCH_SIZE)}
        return pairs.paid_flood(n, distinct, pairs.DEFAULT_SERVICES, work, env=env, name=f"paid-{guarantee}")

    runs: dict[str, Any] = {}
    order = ("exactly_once", "at_least_once") if r % 2 == 0 else ("at_least_once", "exactly_once")
    for guarantee in order:
        runs[guarantee] = await guarded(results, f"eos[{r}] {guarantee}", flood(guarantee))
        if not runs[guarantee]:
            break
    got = None
    if runs.get("exactly_once") and runs.get("at_least_once"):
        got = {"first": order[0], "batch_size": EOS_BATCH_SIZE, **runs,
               "ratio": runs["exactly_once"]["per_s"] / runs["at_least_once"]["per_s"]}
    results["pairs"].setdefault("eos", []).append(got)


#: both guarantees at the default BATCH_SIZE: the setting a user starts with
EOS_BATCH_SIZE = 500


async def run_unpaired(results: dict[str, Any], sizes: Sizes, quick: bool, repeat: int, only: set[str],
                       work: Path) -> None:
    """The measurements with no bare-loop pair: recovery, sweep, latency, retry, start-up."""
    if "recovery" in only:
        log(f"P2 recovery: dedup table of {sizes.recovery_keys:,} keys, {repeat} round(s) of kept/wiped restarts")
        results["recovery"] = await guarded(results, "recovery", pairs.recovery(sizes.recovery_keys, repeat, work))
    if "sweep" in only:
        from bench import sweep

        log(f"sweep cost: {sizes.sweep_expired:,} expired keys over {sizes.sweep_live[0]:,} and "
            f"{sizes.sweep_live[1]:,} live keys")
        results["sweep"] = await guarded(results, "sweep", sweep.run(sizes.sweep_live, sizes.sweep_expired,
                                                                     max(3, repeat)))
    if "latency" in only:
        for services in ("notifications", pairs.DEFAULT_SERVICES):
            log(f"P4 latency at {sizes.latency_rate:,} orders/s, SERVICES={services}")
            results.setdefault("latency", {})[services] = await guarded(
                results, f"latency {services}",
                pairs.latency(sizes.latency_rate, sizes.latency_seconds, services, work))
    if "retry" in only:
        log("P5 retry delays")
        results["retry"] = await guarded(results, "retry", pairs.retry_delays(sizes.retry_delays, sizes.retry_keys, work))
    if "frontdoor" in only:
        from bench import frontdoor

        log("front door: wrk -t2 -c64 on POST /orders, order service with default settings")
        results["frontdoor"] = await guarded(results, "frontdoor", frontdoor.run(work, seconds=5 if quick else 15))
        for database, mix in (("sqlite", "create-pay"), ("postgresql", "create"), ("postgresql", "create-pay")):
            log(f"front door: wrk -t2 -c64, {mix} on {database}")
            results.setdefault("frontdoor_more", []).append(await guarded(
                results, f"frontdoor {database} {mix}",
                frontdoor.run(work, seconds=5 if quick else 15, database=database, mix=mix)))
    if "profile" in only:
        await profile_runs(results, sizes, work)
    if "scale" in only:
        from bench import scale

        log("scale over cores: the default OrderPaid flood on 1 and on 2 worker processes in one group")
        results["scale"] = await guarded(results, "scale", scale.run(sizes.flood_events, sizes.flood_distinct, work))
    if "startup" in only:
        from bench import startup

        rounds = 3 if quick else 5
        log(f"start-up: start → /health 200, every service, {rounds} rounds (empty broker, then a restart)")
        results["startup"] = await guarded(results, "startup", startup.run(rounds, work))


async def profile_runs(results: dict[str, Any], sizes: Sizes, work: Path) -> None:
    """One more run of each flood and of the headline with py-spy sampling the worker
    (bench.profile): where the time goes. Runs of their own: no ratio comes from them."""
    n, distinct = sizes.flood_events, sizes.flood_distinct
    runs = {
        "paid-notifications": lambda: pairs.paid_flood(n, distinct, "notifications", work, name="prof-n", profile=True),
        "paid": lambda: pairs.paid_flood(n, distinct, pairs.DEFAULT_SERVICES, work, name="prof-d", profile=True),
        "headline": lambda: pairs.lifecycle(sizes.orders, work, profile=True),
    }
    for name, run in runs.items():
        log(f"profile: {name} with py-spy sampling the worker")
        got = await guarded(results, f"profile {name}", run())
        if got and "profile" in got:
            results.setdefault("profiles", {})[name] = {**got["profile"], "per_s": got["per_s"],
                                                        "services": got["services"]}


def parse_only(value: str) -> set[str]:
    if not value.strip():
        return set(NAMES)
    out: set[str] = set()
    for name in (v.strip().lower() for v in value.split(",") if v.strip()):
        if name in ALIASES:
            out.update(ALIASES[name])
        elif name in NAMES:
            out.add(name)
        else:
            raise SystemExit(f"--only: unknown {name!r}; choose from {', '.join(NAMES + tuple(ALIASES))}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (report labelled QUICK)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(NAMES)} "
                                                   f"(aliases {', '.join(ALIASES)})")
    parser.add_argument("--repeat", type=int, default=1, metavar="K",
                        help="run each worker/bare pair K times; report the median ratio and the spread")
    parser.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md even with --only")
    parser.add_argument("--brokers", default="", help="comma-separated: kafka, tansu (default: kafka,tansu "
                                                      "where Java 17+ is present, else tansu)")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="measure nothing: write docs/benchmarks.md and .png again from a results file")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be ≥ 1")
    if args.render:
        source = Path(args.render).resolve()
        results = json.loads(source.read_text())
        results["summary"] = summarize(results)
        for other in (results.get("other_brokers") or {}).values():
            other["summary"] = summarize(other)
        write_plot(results, ROOT / "docs" / "benchmarks.png")
        write_markdown(results, ROOT / "docs" / "benchmarks.md", source.relative_to(ROOT))
        print(f"docs/benchmarks.md and docs/benchmarks.png written from {source.relative_to(ROOT)}")
        return
    only = parse_only(args.only)
    sizes = QUICK if args.quick else FULL
    brokers = [b.strip() for b in (args.brokers or default_brokers()).split(",") if b.strip()]
    if not brokers or set(brokers) - {"kafka", "tansu"}:
        parser.error("--brokers: kafka and/or tansu")
    results = asyncio.run(run_brokers(sizes, args.quick, args.repeat, only, brokers))
    suffix = ("-quick" if args.quick else "") + ("-only" if results["only"] else "")
    out = ROOT / "bench" / "results" / f"{results['date'][:10]}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if results["only"] is None or args.write_docs:
        write_plot(results, ROOT / "docs" / "benchmarks.png")
        write_markdown(results, ROOT / "docs" / "benchmarks.md", out.relative_to(ROOT))
        print(f"\nresults: {out.relative_to(ROOT)}; report: docs/benchmarks.md")
    else:
        print(f"\nresults: {out.relative_to(ROOT)} (docs/benchmarks.md left alone: --only)")
    for row in results["summary"]:
        print(f"{row['label'][:60]:60s} {row['shown']:>22s}  goal {row['goal']:<14s} {row['verdict']}")
    for name, other in (results.get("other_brokers") or {}).items():
        print(f"\n{name}:")
        for row in other["summary"]:
            print(f"{row['label'][:60]:60s} {row['shown']:>22s}  goal {row['goal']:<14s} {row['verdict']}")
    errors = {**results["errors"], **{f"{b}: {k}": v for b, o in (results.get("other_brokers") or {}).items()
                                      for k, v in o.get("errors", {}).items()}}
    if errors:
        print(f"\n{len(errors)} measurement(s) failed: {', '.join(errors)}")


if __name__ == "__main__":
    main()
