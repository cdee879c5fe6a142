"""One exception per failure mode, under one base.

Each class says what the pipeline does with the event that raised it:
``retryable = True`` → the next retry tier (``<service>.retry.<n>``), then the DLQ
with ``max_attempts``; ``retryable = False`` → the DLQ at once with ``dlq_reason``.
Send failures say the same about the *message*: a send that cannot succeed by
waiting (:class:`TooLarge`, :class:`UnknownDestination`, :class:`Unserializable`)
is never sent again; the event it belonged to is dead-lettered instead.
"""

from __future__ import annotations


class StreamsError(Exception):
    """Base of every failure the pipeline knows how to route."""

    retryable: bool = False
    dlq_reason: str = "non_retryable"


# -- input that can never be processed: dead-lettered at once -----------------------


class DecodeError(StreamsError):
    """The record's bytes are not a JSON object (or are empty). Dead-lettered."""

    dlq_reason = "decode_error"


class ValidationFailed(StreamsError):
    """The JSON does not match the schema (types, version, bounds, key). Dead-lettered."""

    dlq_reason = "validation_error"


class TooLarge(StreamsError):
    """A record, a derived record or a state value exceeds its size limit. Dead-lettered
    (``too_large``); a letter too large for the DLQ keeps its headers, a digest and
    its first bytes."""

    dlq_reason = "too_large"


# -- side effects -------------------------------------------------------------------


class TransientError(StreamsError):
    """A failure that may pass: retried through the retry tiers."""

    retryable = True


class GatewayUnavailable(TransientError):
    """Timeout, connection error, HTTP 5xx or 429 from a downstream service. Retried."""


class PermanentError(StreamsError):
    """A failure that will not pass by retrying. Dead-lettered at once."""


class GatewayRejected(PermanentError):
    """HTTP 4xx (other than 429) from a downstream service: the request is wrong. Dead-lettered."""


class IllegalTransition(PermanentError):
    """The order's state machine does not allow this event now or ever. Dead-lettered
    (``illegal_transition``)."""

    dlq_reason = "illegal_transition"


class ParkTimeout(PermanentError):
    """An out-of-order event waited ``PARK_TIMEOUT`` seconds for its predecessor.
    Dead-lettered (``out_of_order_timeout``)."""

    dlq_reason = "out_of_order_timeout"


# -- sends that cannot succeed by waiting --------------------------------------------


class UnknownDestination(PermanentError):
    """A send to a topic outside the registry, or to a partition the topic does not
    have. Never sent; the event is dead-lettered."""


class Unserializable(PermanentError):
    """A message the producer cannot encode (a key or value that is not bytes). Never
    sent; the event is dead-lettered."""


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
    return TransientError(f"{type(exc).__name__}: {exc}")
