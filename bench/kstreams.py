"""The Kafka Streams reference (``bench/kafka-streams/``, issue 21): built with Maven on
first use, run on the same kind of broker and the same inputs as the worker's
``SERVICES=notifications`` flood.

The application (``NotificationsDedup.java``) does the notifications contract with the
Processor API — dedup by record key in a persistent RocksDB store with a changelog,
expiry by stream-time punctuation, a log-only notifier, ``NotificationSent`` JSON out
with ``acks=all`` — on one stream thread, ``at_least_once`` or ``exactly_once_v2``. Its
span is the first record processed → the end of its close (every forward flushed and
acknowledged, offsets committed); CPU is the JVM's over the same span. Jars live in
``bench/kafka-streams/target/`` (ignored by git), never in the repository."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from typing import Any

from bench.common import ROOT, create_topics, fresh_broker, order_paid_inputs, produce_all

PROJECT = ROOT / "bench" / "kafka-streams"
JAR = PROJECT / "target" / "notifications-kstreams-0.jar"
MAIN = "orderstreams.bench.NotificationsDedup"
PAID, SINK = "events.order.paid.v1", "kstreams.sink"


def build() -> tuple[bool, str]:
    """``mvn package`` when the jar is missing or older than the sources; (ok, why not)."""
    sources = [PROJECT / "pom.xml", *PROJECT.joinpath("src").rglob("*")]
    if JAR.exists() and (PROJECT / "target" / "lib").is_dir() and \
            JAR.stat().st_mtime >= max(p.stat().st_mtime for p in sources if p.is_file()):
        return True, ""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        return False, "no mvn or java on PATH"
    out = subprocess.run(["mvn", "-q", "-B", "-f", str(PROJECT / "pom.xml"), "package", "-DskipTests"],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return False, "mvn package failed: " + (out.stdout + out.stderr)[-800:]
    return True, ""


def classpath() -> str:
    return ":".join([str(JAR), str(PROJECT / "target" / "lib" / "*")])


async def run(n: int, distinct: int, guarantee: str) -> dict[str, Any]:
    """Kafka Streams over ``n`` OrderPaid (``distinct`` ids) on a fresh broker."""
    with fresh_broker() as broker:
        await create_topics(broker.bootstrap, [PAID, SINK])
        await produce_all(broker.bootstrap, PAID, order_paid_inputs(n, distinct))
        state = tempfile.mkdtemp(prefix="kstreams-state-")
        try:
            out = await asyncio.to_thread(
                subprocess.run,
                ["java", "-Xms512m", "-Xmx1g", "-cp", classpath(), MAIN, "--bootstrap", broker.bootstrap,
                 "--source", PAID, "--sink", SINK, "--expect-distinct", str(distinct), "--state-dir", state,
                 "--guarantee", guarantee],
                capture_output=True, text=True, timeout=900,
            )
        finally:
            shutil.rmtree(state, ignore_errors=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"Kafka Streams ({guarantee}) failed: {(out.stderr or out.stdout)[-1500:]}")
    r = json.loads(lines[-1])
    seconds = float(r["seconds"])
    return {"guarantee": guarantee, "events": n, "consumed": r.get("events"), "forwarded": r.get("forwarded"),
            "seconds": seconds, "events_per_s": n / seconds, "cpu_s_per_100k": r["cpu_seconds"] * 100_000 / n,
            "start_to_first_record_s": r.get("start_to_first_record_s"),
            "last_forward_s": r.get("last_forward_s"), "close_s": r.get("close_s"), "version": r.get("kafka_streams")}


def main() -> None:  # python -m bench.kstreams N DISTINCT [GUARANTEE]: one run, for trying it by hand
    import sys

    import bench.common as common

    ok, why = build()
    if not ok:
        raise SystemExit(why)
    common.BROKER = "kafka"
    n, distinct = int(sys.argv[1]), int(sys.argv[2])
    print(json.dumps(asyncio.run(run(n, distinct, sys.argv[3] if len(sys.argv) > 3 else "at_least_once"))))


if __name__ == "__main__":
    main()
