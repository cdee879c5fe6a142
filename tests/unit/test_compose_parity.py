"""docker-compose.yml describes production; streams/broker/kafka.py starts the broker that
`make run`, the tests and the benchmarks use. Their Kafka settings are checked against
each other here (issue 19, item 7): the same release, and every broker setting both set
equal — for one node (compose's default) and for three (its `cluster` profile with
deploy/cluster.env, against the runner's 3-node quorum)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from streams.broker.kafka import KAFKA_VERSION, node_properties

ROOT = Path(__file__).resolve().parents[2]

#: compose's environment variable (apache/kafka image) → the broker property it sets
SHARED = {
    "KAFKA_PROCESS_ROLES": "process.roles",
    "KAFKA_CONTROLLER_LISTENER_NAMES": "controller.listener.names",
    "KAFKA_INTER_BROKER_LISTENER_NAME": "inter.broker.listener.name",
    "KAFKA_DEFAULT_REPLICATION_FACTOR": "default.replication.factor",
    "KAFKA_MIN_INSYNC_REPLICAS": "min.insync.replicas",
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "offsets.topic.replication.factor",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "transaction.state.log.replication.factor",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "transaction.state.log.min.isr",
    "KAFKA_NUM_PARTITIONS": "num.partitions",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "group.initial.rebalance.delay.ms",
    "KAFKA_MESSAGE_MAX_BYTES": "message.max.bytes",
    "KAFKA_REPLICA_FETCH_MAX_BYTES": "replica.fetch.max.bytes",
}


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def interpolate(value: object, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with ``env``."""
    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3) or ""
        return env.get(name, default)
    return re.sub(r"\$\{([A-Z0-9_]+)(:-([^}]*))?\}", one, str(value))


def compose_broker(service: str, env: dict[str, str]) -> dict[str, str]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = doc["services"][service]["environment"]
    return {k: interpolate(v, env) for k, v in environment.items()}


def runner_broker(nodes: int) -> dict[str, str]:
    text = node_properties(1, port=9092, controller_ports={i: 9093 + i for i in range(1, nodes + 1)},
                           log_dir=Path("/tmp/x"))
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_compose_runs_the_kafka_release_the_runner_pins() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {s: d["image"] for s, d in doc["services"].items() if str(d.get("image", "")).startswith("apache/kafka")}
    assert images and set(images.values()) == {f"apache/kafka:{KAFKA_VERSION}"}, images


@pytest.mark.parametrize("nodes, env", [(1, {}), (3, env_file(ROOT / "deploy" / "cluster.env"))],
                         ids=["one node", "cluster profile"])
def test_compose_and_the_runner_set_the_same_broker_settings(nodes: int, env: dict[str, str]) -> None:
    compose, runner = compose_broker("kafka", env), runner_broker(nodes)
    differ = {var: (compose.get(var), runner.get(prop)) for var, prop in SHARED.items()
              if compose.get(var) != runner.get(prop)}
    assert not differ, f"compose vs runner: {differ}"
