"""``python -m bench`` (or ``make bench``): every pair side by side, in one run.

Writes ``bench/results/<date>.json`` and ``docs/benchmarks.md`` (with
``docs/benchmarks.png``) and prints every ratio. ``--quick`` uses smaller inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

from bench import pairs
from bench.report import GOALS, ratios, write_markdown, write_plot

ROOT = Path(__file__).resolve().parents[1]


async def run_all(quick: bool, only: set[str] | None) -> dict[str, Any]:
    n, distinct = (20_000, 16_000) if quick else (100_000, 80_000)
    work = Path(tempfile.mkdtemp(prefix="order-streams-bench-"))
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                    "platform": platform.platform()},
        "inputs": {"events": n, "distinct": distinct, "quick": quick},
    }

    def want(name: str) -> bool:
        return only is None or name in only

    if want("p1") or want("p2"):
        print("P1/P2: worker …", flush=True)
        results.update(await pairs.p1_worker(n, distinct, work))
        print("P1: bare aiokafka loop …", flush=True)
        results["p1_bare"] = await pairs.p1_bare(n, distinct)
        print("P1: Quix Streams …", flush=True)
        results["p1_quix"] = await pairs.p1_quix(n, distinct)
    if want("p3"):
        print("P3: outbox relay vs raw producer …", flush=True)
        results.update(await pairs.p3_relay(5_000 if quick else 20_000, work))
    if want("p4"):
        print("P4: end-to-end latency at 1,000 orders/s …", flush=True)
        results["p4_latency"] = await pairs.p4_latency(1000, 5 if quick else 15, work)
    if want("p5"):
        print("P5: retry delays …", flush=True)
        results["p5_retry"] = await pairs.p5_retry_delays((0.5, 1.0, 2.0), 20, work)
    results["ratios"] = ratios(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller inputs (a few minutes)")
    parser.add_argument("--only", default="", help="comma-separated subset: p1,p2,p3,p4,p5")
    args = parser.parse_args()
    only = {p.strip() for p in args.only.split(",") if p.strip()} or None
    results = asyncio.run(run_all(args.quick, only))
    out = ROOT / "bench" / "results" / f"{results['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_plot(results, ROOT / "docs" / "benchmarks.png")
    write_markdown(results, ROOT / "docs" / "benchmarks.md", out.relative_to(ROOT))
    print(f"\nresults: {out.relative_to(ROOT)}; report: docs/benchmarks.md")
    for name, r in results["ratios"].items():
        goal = GOALS.get(name)
        verdict = "" if r.get("value") is None or goal is None else ("  ok" if goal[1](r["value"]) else "  MISSED")
        print(f"{name:32s} {r.get('value')!s:>10} (goal {goal[0] if goal else '-'}){verdict}")


if __name__ == "__main__":
    main()
