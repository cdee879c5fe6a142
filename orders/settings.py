"""Settings of the order service process (one frozen model, built once)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.kafka_connection import KafkaConnection
from streams.settings import SettingsError, check_database_url, describe_error, mask_database_url


def _default_relay_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class OrdersSettings(KafkaConnection, BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=False, allow_inf_nan=False
    )

    database_url: str = Field(
        "sqlite:///./data/orders.db", pattern=r"^(sqlite:///.+|postgres(ql)?://.+)$"
    )
    #: SQLite only: ``PRAGMA synchronous`` (see ``orders.db.SQLITE_SYNCHRONOUS``). FULL
    #: keeps a 201's rows through a power loss; NORMAL only through a process crash.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    orders_host: str = "127.0.0.1"
    orders_port: int = Field(8000, ge=1, le=65535)
    #: Largest request body the API reads (bytes); a larger one is answered 413.
    orders_max_body_bytes: int = Field(64 * 1024, ge=1024)
    #: Seconds an ``Idempotency-Key`` and its stored answer are kept (default 24 h).
    idempotency_ttl: float = Field(24 * 3600.0, gt=0)
    topic_partitions: int = Field(4, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    #: ``serve`` also runs the relay in-process; false = API only.
    relay_enabled: bool = True
    relay_id: str = Field(default_factory=_default_relay_id)
    relay_batch_size: int = Field(500, ge=1)
    #: A batch also ends before its rows' key + value + header bytes pass this (a row
    #: larger than it alone still goes, as a batch of one).
    relay_batch_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: Batches the relay keeps in flight at once: claimed, sent, acks not yet all in
    #: (rules: ``orders/relay.py``). On PostgreSQL each holds a pooled connection.
    relay_in_flight: int = Field(4, ge=1, le=16)
    #: Fallback polling when no commit woke the relay (another process wrote rows).
    relay_poll_interval: float = Field(1.0, gt=0)
    relay_backoff_base: float = Field(0.5, gt=0)
    relay_backoff_max: float = Field(60.0, gt=0)
    #: Seconds a broker send may take before the row counts as failed.
    relay_send_timeout: float = Field(10.0, gt=0)
    #: The relay producer's ``max_request_size`` (aiokafka's default, 1 MiB). The API
    #: refuses (422) an order whose event would not fit, instead of accepting a row
    #: the relay can never publish.
    relay_max_request_bytes: int = Field(1024 * 1024, ge=4096)
    #: ``python -m orders relay`` serves ``/metrics`` and ``/health`` on this port
    #: (host ``ORDERS_HOST``); ``serve`` exports the relay's metrics on ``ORDERS_PORT``.
    relay_port: int = Field(8001, ge=1, le=65535)
    #: Seconds between refreshes of the outbox gauges by the process running the relay.
    outbox_stats_interval: float = Field(5.0, gt=0)
    #: Sent rows are deleted this many seconds after they were sent.
    outbox_retention: float = Field(3600.0, ge=0)
    #: The ``OrderCreated`` version the API writes: 1 (``events.order.created.v1``) or 2
    #: (``….v2``, with ``currency``). Switch to 2 only once every consumer reads v2.
    order_events_version: int = Field(1, ge=1, le=2)
    #: ISO 4217 code of the orders (``OrderCreated`` v2's ``currency``; consumers upcast
    #: v1 with their own ``DEFAULT_CURRENCY``: keep the two equal).
    default_currency: str = Field("EUR", pattern=r"^[A-Z]{3}$")
    #: ``text`` (human) or ``json`` (one object per line) log lines; ``LOG_LEVEL`` as in logging.
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _database_url_as_meant(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level



def load_orders_settings(**overrides: object) -> OrdersSettings:
    try:
        return OrdersSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        print(_describe(exc), file=sys.stderr)
        raise SettingsError(2) from None


def _describe(exc: ValidationError) -> str:
    """The one line of :func:`describe_error`, with a bad ``DATABASE_URL`` masked up to
    its host even when it has no ``@`` (``postgresql://user:password/db``)."""
    line = describe_error(exc)
    err = exc.errors()[0]
    value = err.get("input")
    if err["loc"] and err["loc"][0] == "database_url" and isinstance(value, str) and value:
        line = line.replace(value, mask_database_url(value))
    return line
