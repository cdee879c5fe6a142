"""Topic declarations: sources, derived events, retry tiers and dead-letter topics.

All are read and written as raw bytes (``key_serializer``/``value_serializer``
``raw``): decoding happens in :mod:`streams.pipeline`, where a failure can go to
the DLQ instead of being dropped inside Faust. Keys are the order id's UTF-8 bytes
everywhere, the same bytes the tables use.
"""

from __future__ import annotations

from typing import Any

from streams.events import EVENT_TYPES, Event
from streams.pipeline import dlq_topic, retry_topic


def raw_topic(app: Any, name: str, partitions: int, config: dict[str, Any] | None = None) -> Any:
    return app.topic(
        name, partitions=partitions, key_serializer="raw", value_serializer="raw", config=config
    )


def event_topic(app: Any, event_type: type[Event], partitions: int) -> Any:
    return raw_topic(app, event_type.topic(), partitions)


def service_topics(
    app: Any, service: str, tiers: int, partitions: int, max_message_bytes: int
) -> tuple[list[Any], Any]:
    """The retry tiers ``<service>.retry.1..tiers`` and ``<service>.dlq``.

    Created with ``max.message.bytes`` = ``MAX_MESSAGE_BYTES``: whatever the source
    topic accepted must fit into its retry tiers and DLQ unchanged.
    """
    config = {"max.message.bytes": str(max_message_bytes)}
    retries = [raw_topic(app, retry_topic(service, n), partitions, config) for n in range(1, tiers + 1)]
    return retries, raw_topic(app, dlq_topic(service), partitions, config)


def all_event_topics(app: Any, partitions: int) -> dict[type[Event], Any]:
    return {t: event_topic(app, t, partitions) for t in EVENT_TYPES}
