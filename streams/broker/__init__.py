"""The brokers this project runs for development and tests: ``python -m streams.broker``.

- :class:`EmbeddedBroker` (``streams/broker/tansu.py``): Tansu, memory only, starts in
  well under a second; the default of ``python -m streams.broker`` (or ``--tansu``).
- :class:`KafkaBroker` (``streams/broker/kafka.py``): Apache Kafka, one node or a KRaft
  quorum, data kept on disk; ``python -m streams.broker --kafka [--nodes N]``.
"""

from streams.broker.kafka import KAFKA_VERSION, KafkaBroker, KafkaSetupError
from streams.broker.ports import PortInUseError, free_port, kill_when_parent_dies, port_free, process_listens
from streams.broker.tansu import EmbeddedBroker, broker_binary

__all__ = [
    "KAFKA_VERSION", "EmbeddedBroker", "KafkaBroker", "KafkaSetupError", "PortInUseError", "broker_binary",
    "free_port", "kill_when_parent_dies", "port_free", "process_listens",
]
