"""Quix Streams doing the notifications pipeline's dedup and forward (benchmark pair P1).

``python -m bench.quix_dedup --bootstrap H:P --source T --sink T --expect-distinct N
[--state-dir DIR] [--group G] [--timeout S] [--commit-interval S] [--commit-every N]``

A Quix Streams application (pinned: ``quixstreams==3.28.1``) that reads JSON values
keyed by ``order_id``, keeps "seen" per key in Quix's RocksDB state (changelog topic
on), forwards the first occurrence of each id to the sink as
``{"order_id": ..., "causation": ...}`` and stops once it has forwarded N ids (or at
``--timeout``). Prints one JSON line on stdout: events, forwarded, seconds,
cpu_seconds, broker, notes. Everything else (Quix's and librdkafka's logs) goes to
stderr.

Workarounds for the embedded Tansu broker (see bench/README-quix.md):

* Tansu's DescribeConfigs answers with no entries, and Quix reads ``retention.ms``
  of the input topic to derive its changelog topic's config (``KeyError:
  'retention.ms'``). ``DefaultingTopicAdmin`` fills in the configs the broker did
  not report (``retention.ms``/``retention.bytes`` = -1: Tansu enforces no
  retention) and is handed to Quix through ``Application(topic_manager=...)``.
  Configs the broker does report are left alone, so on Apache Kafka it changes
  nothing.
* librdkafka's group join waits about half the session timeout on Tansu (45 s
  default → ~23 s before the first assignment), so the consumer uses
  ``session.timeout.ms=6000`` (join in ~3 s), as the project's Faust settings do.
* Quix gives an output record the input record's timestamp. The harness times the
  sink by its records' timestamps, so the output timestamp is set to the wall clock
  at processing time (``sdf.set_timestamp``), which is what aiokafka/Faust do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

QUIXSTREAMS_VERSION = "3.28.1"

# Configs Quix needs from DescribeConfigs and a broker may not report.
# -1 = unlimited, which is what Tansu does (it enforces neither retention.ms nor .bytes).
MISSING_TOPIC_CONFIG_DEFAULTS = {"retention.ms": "-1", "retention.bytes": "-1"}


def _make_admin_class():
    from quixstreams.models.topics import TopicAdmin, TopicConfig

    class DefaultingTopicAdmin(TopicAdmin):
        """A TopicAdmin that supplies topic configs the broker did not report."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.defaulted: set[str] = set()

        def inspect_topics(self, topic_names: list[str], timeout: float = 30) -> dict[str, TopicConfig | None]:
            found = super().inspect_topics(topic_names, timeout=timeout)
            for name, config in found.items():
                if config is None:
                    continue
                missing = {k: v for k, v in MISSING_TOPIC_CONFIG_DEFAULTS.items() if k not in config.extra_config}
                if missing:
                    self.defaulted.add(name)
                    found[name] = TopicConfig(
                        num_partitions=config.num_partitions,
                        replication_factor=config.replication_factor,
                        extra_config={**missing, **config.extra_config},
                    )
            return found

    return DefaultingTopicAdmin


def broker_kind(bootstrap: str, topic: str, timeout: float = 15.0) -> tuple[str, str]:
    """("tansu" | "librdkafka-mock" | "kafka", cluster id), asked with confluent-kafka's AdminClient."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=timeout)
    cluster_id = str(metadata.cluster_id or "")
    if cluster_id.startswith("mockCluster"):
        return "librdkafka-mock", cluster_id
    if topic not in metadata.topics:
        raise SystemExit(f"quix_dedup: source topic {topic!r} does not exist on {bootstrap}")
    try:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=timeout)
        entries = next(iter(futures.values())).result()
    except Exception:  # noqa: BLE001 - only a label for the report
        entries = {}
    return ("tansu" if not entries else "kafka"), cluster_id


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The dedup-and-forward application, run until it has forwarded ``--expect-distinct``
    ids or ``--timeout``; returns the JSON line's fields."""
    kind, cluster_id = broker_kind(args.bootstrap, args.source)
    group = args.group or f"quix-dedup-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    own_state = args.state_dir is None
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="quix-dedup-state-")
    use_changelog = not args.no_changelog

    admin_class = _make_admin_class()
    admin = admin_class(broker_address=args.bootstrap, extra_config={"acks": "all"})
    app = _application(args, admin, group, state_dir, use_changelog)
    stats: dict[str, Any] = {"events": 0, "forwarded": 0, "t0": None, "c0": None, "t_nth": None,
                             "t_last": None}
    _dedup_and_forward(app, args.source, args.sink, args.expect_distinct, stats)
    timed_out = _run_until_stopped(app, args.timeout)
    t_end, c_end = time.perf_counter(), time.process_time()

    t0 = stats["t0"] or t_end
    c0 = stats["c0"] if stats["c0"] is not None else c_end
    notes = [
        f"quixstreams {QUIXSTREAMS_VERSION}, confluent-kafka {_version('confluent_kafka')}",
        f"state RocksDB, changelog {'on' if use_changelog else 'off'}",
        f"at-least-once, commit_interval {args.commit_interval:g}s, commit_every {args.commit_every}",
        f"cluster {cluster_id}",
    ]
    if admin.defaulted:
        notes.append(
            "broker reported no topic configs; supplied retention.ms/retention.bytes=-1 for "
            + ",".join(sorted(admin.defaulted))
        )
    if stats["t_nth"] is not None:
        notes.append("seconds end after Quix's final checkpoint (forwards acked, offsets committed) and "
                     f"consumer close; Nth forward was handed to the producer at {stats['t_nth'] - t0:.3f}s")
    if timed_out and stats["t_nth"] is None:
        notes.append(f"TIMEOUT after {args.timeout}s; seconds end at the last forward, "
                     "cpu_seconds at the end of the run")
        if stats["t_last"] is not None:
            t_end = stats["t_last"]
    if own_state:
        shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "events": stats["events"],
        "forwarded": stats["forwarded"],
        "seconds": round(t_end - t0, 4),
        "cpu_seconds": round(c_end - c0, 4),
        "broker": kind,
        "notes": "; ".join(notes),
    }


def _application(args: argparse.Namespace, admin: Any, group: str, state_dir: str, use_changelog: bool) -> Any:
    """The Quix ``Application``: at-least-once, ``acks=all``, the short session timeout
    (module docstring) and ``admin`` (a ``DefaultingTopicAdmin``) for its topics."""
    from quixstreams import Application
    from quixstreams.models.topics import TopicManager

    topic_manager = TopicManager(
        topic_admin=admin,
        consumer_group=group,
        timeout=args.request_timeout,
        create_timeout=60,
        auto_create_topics=True,  # creates the changelog topic; source and sink must exist
    )
    return Application(
        broker_address=args.bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        use_changelog_topics=use_changelog,
        commit_interval=args.commit_interval,
        commit_every=args.commit_every,
        processing_guarantee="at-least-once",
        loglevel=args.loglevel,
        topic_manager=topic_manager,
        request_timeout=args.request_timeout,
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        producer_extra_config={"acks": "all"},
    )


def _dedup_and_forward(app: Any, source_name: str, sink_name: str, expect: int, stats: dict[str, Any]) -> None:
    """``source`` → the first occurrence of each key → ``sink`` as a notification; the
    app stops once ``expect`` ids were forwarded. ``stats`` counts and times it."""
    from quixstreams import message_context

    source = app.topic(source_name, key_deserializer="bytes", value_deserializer="json")
    sink = app.topic(sink_name, key_serializer="bytes", value_serializer="json")

    def first_seen(value: dict, state: Any) -> bool:
        # Quix scopes ``state`` to the current message key (the order_id).
        if stats["t0"] is None:
            stats["t0"], stats["c0"] = time.perf_counter(), time.process_time()
        stats["events"] += 1
        if stats["forwarded"] >= expect or state.get("seen") is not None:
            return False
        state.set("seen", 1)
        stats["forwarded"] += 1
        stats["t_last"] = time.perf_counter()
        if stats["forwarded"] == expect:
            stats["t_nth"] = stats["t_last"]
            app.stop()  # the loop ends after this message; Quix then commits a final checkpoint
        return True

    def to_notification(value: dict) -> dict:
        ctx = message_context()
        causation = value.get("event_id") or f"{ctx.topic}/{ctx.partition}/{ctx.offset}"
        return {"order_id": value["order_id"], "causation": causation}

    sdf = app.dataframe(source)
    sdf = sdf.filter(first_seen, stateful=True)
    sdf = sdf.apply(to_notification)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: int(time.time() * 1000))
    sdf.to_topic(sink)


def _run_until_stopped(app: Any, timeout: float) -> bool:
    """``app.run()`` until it stops itself or ``timeout`` s pass; True if the timeout stopped it."""
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        app.stop()

    soft = threading.Timer(timeout, on_timeout)
    soft.daemon = True
    soft.start()
    try:
        app.run()
    finally:
        soft.cancel()
    return timed_out.is_set()


def _version(module: str) -> str:
    try:
        mod = __import__(module)
        v = getattr(mod, "__version__", None) or mod.version()[0]  # confluent_kafka.version() -> (str, int)
        return str(v)
    except Exception:  # noqa: BLE001
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quix_dedup", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True, help="host:port")
    p.add_argument("--source", required=True)
    p.add_argument("--sink", required=True)
    p.add_argument("--expect-distinct", type=int, required=True)
    p.add_argument("--state-dir", default=None, help="Quix state dir (default: a temp dir, removed at the end)")
    p.add_argument("--group", default=None, help="consumer group (default: a fresh one per run)")
    p.add_argument("--timeout", type=float, default=600.0, help="stop after this many seconds")
    p.add_argument("--commit-interval", type=float, default=5.0, help="Quix checkpoint interval (default 5, Quix's own)")
    p.add_argument("--commit-every", type=int, default=0,
                   help="also checkpoint after this many messages (Quix's commit_every; default 0 = off)")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--no-changelog", action="store_true", help="use_changelog_topics=False")
    p.add_argument("--loglevel", default="WARNING")
    args = p.parse_args(argv)

    # A hard stop in case Quix does not come back from a stop() (e.g. a broker that went away).
    def hard_stop() -> None:
        print(json.dumps({"events": None, "forwarded": None, "seconds": None, "cpu_seconds": None,
                          "broker": None, "notes": f"HARD TIMEOUT: run did not return in {args.timeout + 60}s"}),
              flush=True)
        os._exit(3)

    guard = threading.Timer(args.timeout + 60, hard_stop)
    guard.daemon = True
    guard.start()
    result = run(args)
    guard.cancel()
    print(json.dumps(result), flush=True)
    return 0 if result["forwarded"] == args.expect_distinct else 1


if __name__ == "__main__":
    sys.exit(main())
