"""One exception per failure mode, under one base.

Each class says what the pipeline does with the event that raised it:
``retryable = True`` → the next retry tier (``<service>.retry.<n>``), then the DLQ
with ``max_attempts``; ``retryable = False`` → the DLQ at once with ``dlq_reason``.
"""

from __future__ import annotations


class StreamsError(Exception):
    """Base of every failure the pipeline knows how to route."""

    retryable: bool = False
    dlq_reason: str = "non_retryable"


# -- input that can never be processed: dead-lettered at once -----------------------


class DecodeError(StreamsError):
    """The record's bytes are not a JSON object (or are empty)."""

    dlq_reason = "decode_error"


class ValidationFailed(StreamsError):
    """The JSON does not match the event's schema (types, version, key)."""

    dlq_reason = "validation_error"


# -- side effects -------------------------------------------------------------------


class TransientError(StreamsError):
    """A failure that may pass: retried through the retry tiers."""

    retryable = True


class GatewayUnavailable(TransientError):
    """Timeout, connection error, HTTP 5xx or 429 from a downstream service."""


class PermanentError(StreamsError):
    """A failure that will not pass by retrying: dead-lettered at once."""


class GatewayRejected(PermanentError):
    """HTTP 4xx (other than 429) from a downstream service: the request is wrong."""


class IllegalTransition(PermanentError):
    """The order's state machine does not allow this event now or ever (e.g. paid after cancelled)."""

    dlq_reason = "illegal_transition"


class ParkTimeout(PermanentError):
    """An out-of-order event waited ``PARK_TIMEOUT`` seconds and its predecessor never came."""

    dlq_reason = "out_of_order_timeout"


def classify(exc: BaseException) -> StreamsError:
    """Map any exception a handler raised onto the hierarchy.

    Unknown exceptions are treated as transient: a bug that fixes itself on the
    next deploy should not cost the event, and after the last retry it is in the
    DLQ with its type and message.
    """
    if isinstance(exc, StreamsError):
        return exc
    if isinstance(exc, (TimeoutError, ConnectionError, OSError)):
        return GatewayUnavailable(f"{type(exc).__name__}: {exc}")
    wrapped = TransientError(f"{type(exc).__name__}: {exc}")
    return wrapped
