"""Kafka connection security for a real cluster: TLS and SASL, shared by every process.

``KAFKA_SECURITY_PROTOCOL`` = ``PLAINTEXT`` (default) | ``SSL`` | ``SASL_PLAINTEXT`` |
``SASL_SSL``; with SASL, ``KAFKA_SASL_MECHANISM`` (``PLAIN``, ``SCRAM-SHA-256``,
``SCRAM-SHA-512``), ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``; with TLS,
``KAFKA_SSL_CAFILE`` and, for client certificates, ``KAFKA_SSL_CERTFILE`` /
``KAFKA_SSL_KEYFILE``.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, model_validator


class KafkaSecurity(BaseModel):
    """Fields mixed into each process's settings model."""

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""

    @model_validator(mode="after")
    def _complete(self) -> "KafkaSecurity":
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise ValueError("KAFKA_SASL_USERNAME is required with a SASL security protocol")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        ctx = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
        if self.kafka_ssl_certfile:
            ctx.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        return ctx

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for ``faust.App`` (None for PLAINTEXT)."""
        import faust

        if self.kafka_security_protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=self.kafka_sasl_username,
                password=self.kafka_sasl_password.get_secret_value(),
                mechanism=self.kafka_sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        if self.uses_tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka producers, consumers and admin clients."""
        kw: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.uses_tls:
            kw["ssl_context"] = self.ssl_context()
        if self.kafka_security_protocol.startswith("SASL"):
            kw.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password.get_secret_value(),
            )
        return kw
