"""``python -m streams.broker [--tansu | --kafka [--nodes N]] [--port P]``.

Prints the broker's ``kafka://`` URL on stdout once clients can use it, and nothing
else there (scripts read it); progress and errors go to stderr, errors as one line
with a non-zero exit. SIGINT/SIGTERM stop the broker and exit 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from streams.broker.kafka import KAFKA_VERSION, KafkaBroker
from streams.broker.ports import PortInUseError
from streams.broker.tansu import EmbeddedBroker


class _Stop(Exception):
    """A signal arrived while the broker was starting."""


def _err(text: str) -> None:
    print(f"streams.broker: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.broker",
        description="Run a broker for development and tests: Tansu (memory only; the default) "
                    "or Apache Kafka (--kafka; data kept in DATA_DIR).",
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--tansu", action="store_true", help="the embedded Tansu broker, memory only (default)")
    kind.add_argument("--kafka", action="store_true", help="Apache Kafka (needs Java 17+; jars fetched once via Maven)")
    parser.add_argument("--port", type=int, default=9092,
                        help="port on 127.0.0.1 (0 = any free port); with --nodes N, nodes take PORT..PORT+N-1")
    parser.add_argument("--nodes", type=int, default=1, help="Kafka only: nodes of the KRaft quorum (default 1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="Kafka only: where its logs live (default $DATA_DIR/kafka, DATA_DIR default ./data)")
    parser.add_argument("--verbose", action="store_true", help="show the broker's own log")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0-65535")
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if not args.kafka and (args.nodes != 1 or args.data_dir is not None):
        parser.error("--nodes and --data-dir need --kafka (Tansu runs one node, in memory)")

    starting = True
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if starting and args.kafka:
            raise _Stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if args.kafka:
        data_dir = args.data_dir or Path(os.environ.get("DATA_DIR") or "./data") / "kafka"
        broker: KafkaBroker | EmbeddedBroker = KafkaBroker(data_dir, nodes=args.nodes, port=args.port or None,
                                                           quiet=not args.verbose)
    else:
        broker = EmbeddedBroker(args.port or None, quiet=not args.verbose)
    try:
        broker.start(die_with_parent=True)
    except _Stop:
        _err("stopped while starting")
        return 0
    except PortInUseError as exc:
        _err(f"port {exc.port} is already in use (another broker?); "
             "choose a free one with --port (--port 0: any free port)")
        return 1
    except RuntimeError as exc:  # KafkaSetupError included
        _err(str(exc))
        return 1
    finally:
        starting = False
    if isinstance(broker, KafkaBroker):
        _err(f"Apache Kafka {KAFKA_VERSION}, {args.nodes} node(s), ready in {broker.start_seconds:.1f} s; "
             f"data in {broker.data_dir}")
    print(broker.url, flush=True)
    crashed = ""
    try:
        while not stopping:
            if isinstance(broker, KafkaBroker):
                if broker.exited():
                    crashed = ", ".join(f"node {i} (code {c})" for i, c in broker.exited().items())
                    break
            elif broker.process is None or broker.process.poll() is not None:
                crashed = "the broker process"
                break
            time.sleep(0.2)
    finally:
        # Tansu is memory only: nothing to lose by not waiting long. Kafka gets its
        # controlled shutdown (stop_timeout), then SIGKILL.
        broker.stop(timeout=3.0) if isinstance(broker, EmbeddedBroker) else broker.stop()
    if crashed:
        _err(f"{crashed} exited unexpectedly")
        return 1
    _err("stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
