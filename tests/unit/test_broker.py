"""``python -m streams.broker`` and ``EmbeddedBroker`` on a port that is taken.

No broker is started here: a taken port must be refused before Tansu runs. (Before,
a TCP connect to the taken port succeeded — it was another process's listener — so
the module printed its URL and the caller joined someone else's broker.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, PortInUseError, free_port, port_free, process_listens

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another listener (this test) holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_module_refuses_a_taken_port_in_one_line_without_printing_a_url(taken_port: int) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "streams.broker", "--port", str(taken_port)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 1
    assert result.stdout == "", "no URL may be printed for a broker that is not ours"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(taken_port) in lines[0] and "--port" in lines[0]
    assert time.monotonic() - started < 10


def test_embedded_broker_refuses_a_taken_port(taken_port: int) -> None:
    broker = EmbeddedBroker(taken_port)
    with pytest.raises(PortInUseError) as info:
        broker.start()
    assert info.value.port == taken_port
    assert str(taken_port) in str(info.value)
    assert broker.process is None, "Tansu must not be started on a taken port"


def test_port_free_sees_listeners_on_loopback_and_on_every_address() -> None:
    port = free_port()
    assert port_free(port)
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen()
            assert not port_free(port, "127.0.0.1")
            assert not port_free(port, "0.0.0.0")
    assert port_free(port)


def test_port_free_ignores_connections_left_in_time_wait() -> None:
    """A broker restarted on its old port (tests do this) must not be refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    assert port_free(port)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_process_listens_tells_our_listener_from_another_process(taken_port: int) -> None:
    assert process_listens(os.getpid(), taken_port) is True
    assert process_listens(os.getppid(), taken_port) is False
    assert process_listens(os.getpid(), free_port()) is False
