"""Reading one key of a table from a web view: is its partition served here, its value,
and registering a page that Faust routes to the worker holding the key.

Used by the worker's JSON lookups (:mod:`streams.http.web`) and the console's order and
stock pages (:mod:`streams.http.console.views`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from streams.worker import Worker


def owned_partition(app: Any, table: Any, key: bytes) -> int | None:
    """The table partition of ``key`` if this worker holds it as an active, else None."""
    topic = table.changelog_topic.get_topic_name()
    tp = app.producer.key_partition(topic, key)
    actives = app.assignor.assigned_actives()
    return tp.partition if any(a.topic == topic and a.partition == tp.partition for a in actives) else None


def read_value(worker: "Worker", table_name: str, key: bytes) -> tuple[int, Any]:
    """(200, decoded value) | (404, None) | (503, None) when not owned here right now."""
    table = worker.tables[table_name]
    partition = owned_partition(worker.app, table, key)
    if partition is None:
        return 503, None
    [raw] = worker.store.read(table_name, partition, [key])
    return (200, orjson.loads(raw)) if raw is not None else (404, None)


def table_page(app: Any, worker: "Worker", path: str, table_name: str, match_info: str,
               *, name: str) -> Callable[[Any], Any]:
    """Registers a page at ``path`` keyed by ``match_info``: routed to the worker that
    holds the key's partition where this worker runs ``table_name`` (Faust's
    ``table_route``), served here as it is otherwise."""
    def register(handler: Any) -> Any:
        if table_name in worker.tables:
            handler = app.table_route(table=worker.tables[table_name], match_info=match_info)(handler)
        return app.page(path, name=name)(handler)

    return register
