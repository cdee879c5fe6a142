"""How every process connects to Kafka: the broker addresses (``KAFKA_BROKER``, parsed
here and nowhere else) and, for a real cluster, TLS and SASL.

``KAFKA_SECURITY_PROTOCOL`` = ``PLAINTEXT`` (default) | ``SSL`` | ``SASL_PLAINTEXT`` |
``SASL_SSL``; with SASL, ``KAFKA_SASL_MECHANISM`` (``PLAIN``, ``SCRAM-SHA-256``,
``SCRAM-SHA-512``), ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``; with TLS,
``KAFKA_SSL_CAFILE`` and, for client certificates, ``KAFKA_SSL_CERTFILE`` /
``KAFKA_SSL_KEYFILE``.

The rule for credentials the broker refuses: **a process does not retry them.** A
wrong password, an unknown SASL mechanism or a broker certificate the CA file does not
vouch for cannot pass by waiting, so :meth:`KafkaConnection.check_access` (run by the
worker, the relay and the ``dlq`` commands before their first Kafka client) turns the
refusal into a :class:`KafkaAccessError`: one line naming the setting to fix, never
the secret; the process exits non-zero with it. An unreachable broker is not such an
error (each process waits out an outage as before).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator


class KafkaAccessError(Exception):
    """The broker refused this process's Kafka settings, or they cannot be used: ``str()``
    is one line naming the setting (never a password)."""

    #: streams.ops.commands prints ``str(exc)`` as it is (no exception type in front)
    operator_message = True


class KafkaConnection(BaseModel):
    """Fields mixed into each process's settings model."""

    kafka_broker: str = Field(
        "kafka://127.0.0.1:9092",
        description="the Kafka bootstrap servers as a Faust broker URL: kafka://host:port[,host:port…]",
        pattern=r"^(kafka|aiokafka)://[^\s]+$",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""

    @model_validator(mode="after")
    def _complete(self) -> "KafkaConnection":
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise ValueError("KAFKA_SASL_USERNAME is required with a SASL security protocol")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
        return self

    @property
    def broker_hosts(self) -> tuple[str, ...]:
        """``kafka://a:9092,b:9092`` → ``("a:9092", "b:9092")``: the one parse of ``KAFKA_BROKER``
        (a scheme may repeat on each host, ``kafka://a:9092,kafka://b:9092``)."""
        return tuple(h.strip().split("://", 1)[-1] for h in self.kafka_broker.split(",") if h.strip())

    @property
    def bootstrap(self) -> str:
        """``bootstrap_servers`` for aiokafka clients: ``a:9092,b:9092``."""
        return ",".join(self.broker_hosts)

    @property
    def broker_urls(self) -> list[str]:
        """``broker`` for ``faust.App``: ``["kafka://a:9092", "kafka://b:9092"]``."""
        scheme = self.kafka_broker.partition("://")[0]
        return [f"{scheme}://{h}" for h in self.broker_hosts]

    @property
    def uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaAccessError(f"KAFKA_SSL_CAFILE={self.kafka_ssl_cafile}: no CA certificate can be read "
                                   f"from it ({_reason(exc)})") from None
        if self.kafka_ssl_certfile:
            try:
                ctx.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise KafkaAccessError(f"KAFKA_SSL_CERTFILE={self.kafka_ssl_certfile} / KAFKA_SSL_KEYFILE="
                                       f"{self.kafka_ssl_keyfile}: no client certificate and key can be read "
                                       f"({_reason(exc)})") from None
        return ctx

    def explain(self, exc: BaseException) -> KafkaAccessError | None:
        """The :class:`KafkaAccessError` a connection failure means, or None when it is
        not the settings' fault (the broker unreachable, a timeout, …)."""
        from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError

        if isinstance(exc, KafkaAccessError):
            return exc
        if isinstance(exc, SaslAuthenticationFailed):
            return KafkaAccessError(
                f"Kafka refused {self.kafka_sasl_mechanism} authentication of KAFKA_SASL_USERNAME="
                f"{self.kafka_sasl_username}: wrong KAFKA_SASL_PASSWORD, or no such user")
        if isinstance(exc, UnsupportedSaslMechanismError):
            return KafkaAccessError(f"the Kafka broker does not offer KAFKA_SASL_MECHANISM="
                                    f"{self.kafka_sasl_mechanism}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            cafile = self.kafka_ssl_cafile or "unset, the system's CAs"
            return KafkaAccessError(f"the Kafka broker's TLS certificate is not trusted "
                                    f"({getattr(exc, 'verify_message', None) or _reason(exc)}): check KAFKA_SSL_CAFILE ({cafile})")
        if isinstance(exc, ssl.SSLError):
            return KafkaAccessError(f"TLS with the Kafka broker failed ({_reason(exc)}): check "
                                    f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} and KAFKA_SSL_CAFILE")
        return None

    async def check_access(self, bootstrap: str, timeout: float = 15.0) -> None:
        """Connect (TLS handshake, SASL authentication) to the ``host:port`` addresses
        of ``bootstrap`` until one accepts; :class:`KafkaAccessError` when one refuses
        the settings. Addresses that cannot be reached are skipped: an outage is not a
        settings error. Nothing to check with PLAINTEXT."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return
        from aiokafka.conn import create_conn

        kwargs = self.aiokafka_kwargs()
        for address in (a.strip() for a in bootstrap.split(",") if a.strip()):
            host, _, port = address.split("://")[-1].rpartition(":")
            try:
                conn = await asyncio.wait_for(
                    create_conn(host.strip("[]"), int(port), request_timeout_ms=int(timeout * 1000), **kwargs),
                    timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                problem = self.explain(exc)
                if problem is not None:
                    raise problem from None
                continue
            conn.close()
            return

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


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)
