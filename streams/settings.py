"""The worker's settings: one frozen model, built once at start-up and passed in.

Nothing else in the worker reads ``os.environ``. Every variable is validated when
the model is built; :func:`load_settings` turns a bad value into a one-line error
that names the variable and stops the process.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams.kafka_connection import KafkaConnection
from streams.registry import SERVICE_NAMES


#: Shortest ``WEB_TOKEN`` accepted (issue 23: any length was).
MIN_TOKEN_CHARS = 32


class WorkerSettings(KafkaConnection, BaseSettings):
    """Environment of ``faust -A streams worker`` (names are the upper-cased fields)."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=False, allow_inf_nan=False
    )

    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    #: URL other workers use to reach this one (``table_route``); defaults to
    #: ``http://WEB_HOST:WEB_PORT``.
    canonical_url: str = ""
    data_dir: Path = Path("./data")
    dedup_ttl: float = Field(86400, gt=0, description="seconds a processed key is remembered")
    retry_delays: Annotated[tuple[float, ...], NoDecode] = (5.0, 30.0, 300.0)
    #: The order service's database, read by ``reconcile`` (the source of truth).
    database_url: str = Field(
        "sqlite:///./data/orders.db", pattern=r"^(sqlite:///.+|postgres(ql)?://.+)$"
    )
    notifier_url: str = ""
    notifier_timeout: float = Field(5.0, gt=0)
    park_timeout: float = Field(300, gt=0)
    #: ISO 4217 code of orders whose event does not say (``OrderCreated`` v1 upcast to v2).
    default_currency: str = Field("EUR", pattern=r"^[A-Z]{3}$")
    search_url: str = ""
    rpc_timeout: float = Field(0.2, gt=0)
    rpc_max_in_flight: int = Field(100, ge=1)

    #: Consuming services this worker runs (comma-separated); default all.
    services: Annotated[tuple[str, ...], NoDecode] = SERVICE_NAMES
    topic_partitions: int = Field(4, ge=1, description="partitions of topics the app creates")
    topic_replication_factor: int = Field(1, ge=1)
    table_standby_replicas: int = Field(0, ge=0)
    #: Records per batch of the commit protocol (and per offset acknowledgement): after
    #: a crash at most one batch's side effects repeat.
    batch_size: int = Field(500, ge=1, le=100_000)
    #: ``at_least_once`` (default): a crash repeats at most a batch's effects. ``exactly_once``
    #: (Apache Kafka only): each batch — derived, retry and dead-letter records, table
    #: changes and its input offsets — is one Kafka transaction per input partition
    #: (streams/engine/transactions.py); HTTP calls (the SMS gateway) stay at-least-once
    #: with the idempotency key. Refused at start-up on the embedded Tansu broker.
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    #: ``exactly_once`` only: milliseconds a batch's transaction may stay open (the
    #: producers' ``transaction.timeout.ms``, counted by the broker from the batch's first
    #: record). Past it the broker aborts the transaction; the worker stops that partition
    #: and rejoins its group, and the batch is read again (streams/engine/transactions.py,
    #: T6). Keep it above the slowest batch, its HTTP calls included; the broker refuses
    #: more than its ``transaction.max.timeout.ms`` (15 minutes by default).
    transaction_timeout_ms: int = Field(60_000, ge=1_000, le=900_000)
    #: Handler calls run at once within a batch (e.g. concurrent SMS gateway requests).
    handler_concurrency: int = Field(64, ge=1)
    #: Seconds between maintenance ticks (dedup TTL expiry, park timeouts, inventory
    #: decision expiry); each tick costs what is due, not the size of the tables.
    maintenance_interval: float = Field(1.0, gt=0, le=3600)
    #: Seconds a fetch waits on an idle broker (Faust's own default is 1.5 s, which
    #: delays retries and the first event after a quiet spell by up to that much).
    fetch_max_wait: float = Field(0.1, gt=0, le=10)
    #: Largest record the worker produces or fetches (producer max request size and
    #: fetch size). A record it cannot produce could not be dead-lettered.
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024)
    #: Seconds a dead letter is kept (``retention.ms`` of every ``<service>.dlq``, set when
    #: the worker creates the topic): long enough for someone to look at it and redrive.
    dlq_retention: int = Field(30 * 86400, ge=3600)
    #: Seconds a retry record is kept (``retention.ms`` of ``<service>.retry.<n>``): far
    #: beyond the longest retry delay, so a worker stopped for days still finds its retries.
    retry_retention: int = Field(7 * 86400, ge=3600)
    #: Largest value one state key may hold (an order state, a stock entry); an event
    #: that would grow a state beyond it is dead-lettered (``too_large``).
    state_max_bytes: int = Field(256 * 1024, ge=4096)
    #: Seconds sends may keep failing (broker unreachable) before /health says 503;
    #: the worker keeps retrying — it cannot acknowledge what it has not sent.
    send_budget: float = Field(60.0, gt=0)
    #: Seconds without an acknowledged batch, while records wait, before /health says 503.
    stall_timeout: float = Field(120.0, gt=0)
    #: Seconds without an answer from the broker (a probe every few seconds) before
    #: /health says 503; it says 200 again by itself once the broker answers.
    broker_loss_timeout: float = Field(30.0, ge=1, le=3600)
    #: Bearer token for every worker route except /health and /metrics (empty: none).
    web_token: SecretStr = SecretStr("")
    #: More names a request's ``Host`` may give when there is no ``WEB_TOKEN``
    #: (comma-separated; the worker's own names are always allowed): anything else is
    #: refused, so a DNS-rebinding page cannot read the console.
    web_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    #: Faust's generic /table/… and /router/… views (raw table values): off unless set.
    web_table_views: bool = False
    #: Seconds a connection may wait for (the rest of) a request head: idle keep-alive
    #: connections and half-open requests are closed after it (aiohttp's default: an hour).
    web_keepalive_timeout: float = Field(15.0, gt=0, le=3600)
    #: Seconds a request may take to send its body (a POST that stops sending: 408).
    web_body_timeout: float = Field(30.0, gt=0, le=3600)
    #: Open connections the web server keeps at most; it never exceeds half the
    #: process's file limit (the rest is for the SMS gateway, Kafka and the stores).
    #: Beyond it the longest-idle connection is closed, so /health always gets in.
    web_max_connections: int = Field(1000, ge=16, le=1_000_000)
    #: Take table-recovery end offsets from a Fetch response's high watermark instead
    #: of ListOffsets. Unset: the worker asks the broker
    #: (``faust_compat.list_offsets_may_be_short``: on for Tansu, whose ListOffsets
    #: answer is short; off on Apache Kafka); set, it wins. See docs/operations.md.
    end_offsets_from_fetch: bool = True
    #: ``text`` or ``json`` (one object per line: time, level, service, logger, message,
    #: and topic/partition/offset/order id/event type where known).
    log_format: Literal["text", "json"] = "text"
    #: Level of the worker's own log lines; Faust's and aiokafka's stay at WARNING/ERROR
    #: (at INFO they printed ~200 lines at start-up).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("services", mode="before")
    @classmethod
    def _split_services(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("services")
    @classmethod
    def _known_services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in SERVICE_NAMES]
        if unknown or not value:
            raise ValueError(f"unknown or no services {unknown}; choose from {', '.join(SERVICE_NAMES)}")
        return tuple(dict.fromkeys(value))

    @field_validator("web_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(p.strip().lower() for p in value.split(",") if p.strip())
        return value

    @field_validator("web_token")
    @classmethod
    def _long_token(cls, value: SecretStr) -> SecretStr:
        """A token is guessed online at the sign-in form: at least :data:`MIN_TOKEN_CHARS`."""
        secret = value.get_secret_value()
        if secret and len(secret) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters (it has {len(secret)}); make one with "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        if secret != secret.strip() or any(not c.isprintable() for c in secret):
            raise ValueError("must be printable characters without leading or trailing spaces")
        return value

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            return tuple(float(p) for p in parts)
        return value

    @field_validator("retry_delays")
    @classmethod
    def _positive_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not math.isfinite(d) or d < 0 for d in value):
            raise ValueError("delays must be finite numbers of seconds >= 0")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_as_meant(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("notifier_url", "search_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, or empty")
        return value

    @property
    def web_url(self) -> str:
        """How other workers reach this one. With ``WEB_HOST=0.0.0.0`` and no
        ``CANONICAL_URL`` (a container), this host's own address."""
        if self.canonical_url:
            return self.canonical_url
        host = self.web_host
        if host in ("0.0.0.0", "::"):
            import socket

            host = socket.gethostbyname(socket.gethostname())
        return f"http://{host}:{self.web_port}"


class SettingsError(SystemExit):
    """Start-up stops: a setting has a bad value. The message names the variable."""


#: Variables whose value is never printed, whatever is wrong with it.
SECRET_NAMES = ("PASSWORD", "TOKEN", "SECRET", "KEY")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*:/*)")


def mask_secrets(text: str) -> str:
    """``postgresql://user:pw@host/db`` → ``postgresql://user:***@host/db`` (every URL in ``text``)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def mask_url(value: str) -> str:
    """A URL-ish value with everything before its last ``@`` (after the scheme) masked —
    whatever is malformed about it: a missing colon, one slash, an unencoded ``@`` or
    space in the password."""
    if "@" not in value:
        return value
    head, _, host = value.rpartition("@")
    scheme = _SCHEME.match(head)
    return f"{scheme.group(1) if scheme else ''}***@{host}"


def describe_error(exc: ValidationError) -> str:
    """One line naming the first bad variable, its value and what is wrong — with
    credentials in URLs and values of secret variables masked."""
    err = exc.errors()[0]
    name = str(err["loc"][0]).upper() if err["loc"] else "settings"
    if not err["loc"]:  # a check across several variables names them in its message
        return mask_secrets(f"order-streams: invalid settings: {err['msg']}")
    msg = mask_secrets(str(err["msg"]))
    value = err.get("input")
    if any(part in name for part in SECRET_NAMES):
        shown = "=***"
    elif isinstance(value, str):
        masked = mask_url(value)
        msg = msg.replace(value, masked) if value else msg
        shown = f"={masked!r}"
    else:
        shown = f"={value!r}" if isinstance(value, (int, float)) else ""
    more = len(exc.errors()) - 1
    tail = f" (and {more} more)" if more else ""
    return f"order-streams: invalid setting {name}{shown}: {msg}{tail}"


def load_settings(**overrides: object) -> WorkerSettings:
    """Build the settings from the environment; a bad value exits with one line."""
    try:
        return WorkerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        raise SettingsError(2) from None


# -- DATABASE_URL: shared by the order service's settings and the worker's (reconcile) ----------

ENCODE = "percent-encode @ : / ? # in the user and password as %40 %3A %2F %3F %23"


def check_database_url(url: str) -> str:
    """Return ``url``, or raise ValueError saying what does not parse as meant: ``DATABASE_URL``
    must parse as the user meant, or start-up stops with one line.

    A PostgreSQL URL is read the way libpq will read it (psycopg's ``conninfo_to_dict``) and
    refused when that reading cannot be what was meant — instead of a connection pool
    retrying every second with part of the password taken for a host name and written to
    the log:

    - the host holds an ``@``: the user or password has an unencoded ``@`` (libpq splits
      the URL at the *first* ``@``);
    - the database name holds an ``@``: the password has an unencoded ``/``;
    - a port is not a number: a password with ``/``, or ``user:password`` without ``@host``;
    - libpq cannot parse it at all.

    The messages never contain the URL: the caller shows the value masked
    (:func:`mask_database_url`)."""
    if not url.startswith(("postgres://", "postgresql://")):
        return url
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:
        raise ValueError(f"does not parse as a PostgreSQL URL ({ENCODE})") from None
    if "@" in str(parts.get("host", "")):
        raise ValueError(f"the user or password contains an unencoded '@', so part of it would be "
                         f"taken for the host ({ENCODE})")
    if "@" in str(parts.get("dbname", "")):
        raise ValueError(f"the password contains an unencoded '/', so the rest would be taken for the "
                         f"database name ({ENCODE}; an '@' in the database name as %40)")
    ports = str(parts.get("port", "") or "")
    if ports and not all(p.isdigit() for p in ports.split(",") if p):
        raise ValueError(f"the port is not a number: is the password in place of the port, or the '@host' "
                         f"missing? ({ENCODE})")
    return url


def mask_database_url(url: str) -> str:
    """``scheme://***@host…`` (everything before the last ``@`` masked), or, with no
    ``@`` but a ``:`` before the path (``user:password/db``), ``scheme://***/db``: a
    malformed URL may hold a password anywhere before its host."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    authority, slash, path = rest.partition("/")
    if ":" not in authority:  # no room for a password (sqlite:///path, mysql://host)
        return url
    return f"{scheme}://***{slash}{path}"
