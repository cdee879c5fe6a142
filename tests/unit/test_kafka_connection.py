"""streams.kafka_connection: KAFKA_BROKER parsed once; a refusal is one line naming the setting, never the secret
(the broker side runs in tests/integration/test_kafka_security.py)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from streams.broker import free_port
from streams.kafka_connection import KafkaAccessError, KafkaConnection

SECRET = "s3cret-Password-42"


def sasl(**kw: str) -> KafkaConnection:
    return KafkaConnection(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                         kafka_sasl_username="worker", kafka_sasl_password=SECRET, **kw)


@pytest.mark.parametrize("exc, setting", [
    (SaslAuthenticationFailed("invalid credentials"), "KAFKA_SASL_PASSWORD"),
    (UnsupportedSaslMechanismError("x"), "KAFKA_SASL_MECHANISM"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), "KAFKA_SSL_CAFILE"),
])
def test_a_refusal_names_the_setting_and_not_the_secret(exc, setting):
    problem = sasl().explain(exc)
    assert isinstance(problem, KafkaAccessError)
    line = str(problem)
    assert setting in line and SECRET not in line and "\n" not in line


def test_an_outage_is_not_a_settings_error():
    assert sasl().explain(KafkaConnectionError("Unable to bootstrap")) is None
    assert sasl().explain(TimeoutError()) is None


def test_an_unreadable_ca_file_names_the_setting(tmp_path):
    with pytest.raises(KafkaAccessError, match="KAFKA_SSL_CAFILE"):
        sasl(kafka_ssl_cafile=str(tmp_path / "missing.pem")).ssl_context()


def test_check_access_waits_out_an_unreachable_broker_and_skips_plaintext():
    port = free_port()  # nothing listens there
    asyncio.run(sasl().check_access(f"127.0.0.1:{port}", timeout=2))  # no error: an outage
    asyncio.run(KafkaConnection().check_access(f"127.0.0.1:{port}"))


def test_kafka_broker_is_parsed_once_into_what_each_client_takes() -> None:
    conn = KafkaConnection(kafka_broker="kafka://a:9092,b:9093,kafka://c:9094")
    assert conn.broker_hosts == ("a:9092", "b:9093", "c:9094")
    assert conn.bootstrap == "a:9092,b:9093,c:9094"  # aiokafka's bootstrap_servers
    assert conn.broker_urls == ["kafka://a:9092", "kafka://b:9093", "kafka://c:9094"]  # faust.App(broker=…)
