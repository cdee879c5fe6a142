"""Ports and child processes shared by both brokers' runners (Tansu and Apache Kafka)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable


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


def kill_when_parent_dies() -> Callable[[], None] | None:
    """A ``preexec_fn`` setting prctl(PR_SET_PDEATHSIG, SIGKILL) (Linux; else None).

    The signal fires when the *thread* that started the child ends (so start brokers
    that must die with their parent from a main thread). The function is looked up
    here, in the parent: the child only calls it. SIGKILL: certain, and neither
    broker loses an acknowledged record by it (Tansu is memory only; Kafka recovers
    its logs at the next start).
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
