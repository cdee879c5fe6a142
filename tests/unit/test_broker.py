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


# -- Apache Kafka (``--kafka``): what is refused before any java starts ---------------------

from streams.broker import kafka as kafka_runner  # noqa: E402


def run_module(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.broker", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def test_kafka_refuses_a_taken_port_in_one_line_before_java_starts(taken_port: int, tmp_path: Path) -> None:
    result = run_module("--kafka", "--port", str(taken_port), "--data-dir", str(tmp_path / "k"))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(taken_port) in lines[0] and "--port" in lines[0]
    assert not (tmp_path / "k").exists(), "nothing may be formatted for a broker that cannot start"


def test_kafka_refuses_a_taken_port_of_any_node(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        while True:  # a taken port whose predecessor is free: the 3-node cluster's second node
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port_free(port - 1):
                break
            sock.close()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.listen()
        broker = kafka_runner.KafkaBroker(tmp_path / "k", nodes=3, port=port - 1)
        with pytest.raises(PortInUseError) as info:
            broker.start()
    assert info.value.port == port
    assert broker.processes == {}


def test_kafka_without_java_is_one_line_naming_java_17(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "JAVA_HOME": ""}
    result = run_module("--kafka", "--port", "0", "--data-dir", str(tmp_path / "k"), env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no java" in lines[0] and "17" in lines[0] and "--tansu" in lines[0]


def test_kafka_with_an_old_java_is_one_line(tmp_path: Path) -> None:
    """A JAVA_HOME whose java reports Java 11 (a script printing what Java 11 prints)."""
    home = tmp_path / "jdk-11"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    java.chmod(0o755)
    result = run_module("--kafka", "--port", "0", "--data-dir", str(tmp_path / "k"), env={"JAVA_HOME": str(home)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Java 11" in lines[0] and "Java 17+" in lines[0] and "JAVA_HOME" in lines[0]


@pytest.mark.parametrize(("text", "version"), [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('java version "1.8.0_412"', 8),
    ('openjdk version "21" 2023-09-19', 21),
    ('openjdk version "11.0.22" 2024-01-16', 11),
    ("no version here", None),
])
def test_java_version_is_the_feature_release(text: str, version: int | None) -> None:
    assert kafka_runner.parse_java_version(text) == version


def test_pom_pins_the_version_the_runner_reports() -> None:
    pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    assert f"<kafka.version>{kafka_runner.KAFKA_VERSION}</kafka.version>" in pom
    assert "<artifactId>kafka_2.13</artifactId>" in pom and "<packaging>pom</packaging>" in pom
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in pom  # the slf4j 1.x binding Kafka 4 needs
    assert kafka_runner.DEPENDENCY_PLUGIN.endswith(":3.8.1:copy-dependencies")


def test_node_properties_make_a_static_quorum_of_combined_nodes(tmp_path: Path) -> None:
    text = kafka_runner.node_properties(2, port=9093, controller_ports={1: 7001, 2: 7002, 3: 7003},
                                        log_dir=tmp_path / "node-2")
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:7001,2@127.0.0.1:7002,3@127.0.0.1:7003"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9093,CONTROLLER://127.0.0.1:7002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9093"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    single = dict(line.split("=", 1) for line in kafka_runner.node_properties(
        1, port=9092, controller_ports={1: 7001}, log_dir=tmp_path).splitlines())
    assert single["offsets.topic.replication.factor"] == "1"
    assert single["transaction.state.log.min.isr"] == "1"


def test_cluster_ids_are_kraft_uuids() -> None:
    import base64

    for _ in range(50):
        cid = kafka_runner.random_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_a_data_dir_formatted_for_another_node_count_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cluster.properties").write_text("cluster.id=abc\nnodes=1\n")
    broker = kafka_runner.KafkaBroker(tmp_path, nodes=3)
    with pytest.raises(kafka_runner.KafkaSetupError, match="1-node Kafka cluster, not 3"):
        broker._cluster_id()
