"""streams.logs: LOG_FORMAT text|json and LOG_LEVEL for the project's processes
(the order service today; the worker may use the same function)."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from streams import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """What the root handler writes (see :func:`capture`); the root logger is put back afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("aiokafka").level)
    yield io.StringIO()
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])
    logging.getLogger("aiokafka").setLevel(saved[2])


def capture(stream: io.StringIO) -> None:
    """Point the configured stderr handler at ``stream`` (pytest swaps sys.stderr per phase)."""
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)


def test_json_is_one_object_per_line_with_the_extra_fields(stream: io.StringIO) -> None:
    logs.configure("json", "INFO", "orders-relay")
    capture(stream)
    log = logging.getLogger("orders.relay")
    log.warning("row %s failed", "r-1", extra={"order_id": "o-1", "topic": "events.order.paid.v1",
                                                "partition": 3, "offset": 42, "event_type": "OrderPaid"})
    log.info("multi\nline message")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["service"] == "orders-relay" and first["logger"] == "orders.relay"
    assert first["message"] == "row r-1 failed"
    assert (first["order_id"], first["topic"], first["partition"], first["offset"], first["event_type"]) == (
        "o-1", "events.order.paid.v1", 3, 42, "OrderPaid")
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == "multi\nline message"


def test_json_keeps_the_traceback_and_survives_values_json_cannot_hold(stream: io.StringIO) -> None:
    logs.configure("json", "INFO", "orders")
    capture(stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed", extra={"when": object(), "data": b"\x00"})
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert "ValueError: boom" in record["exception"]
    assert record["when"].startswith("<object") and record["data"] == "b'\\x00'"


def test_text_is_the_familiar_line_with_extras_as_key_value(stream: io.StringIO) -> None:
    logs.configure("text", "INFO", "orders")
    capture(stream)
    logging.getLogger("orders.relay").warning("row failed", extra={"order_id": "o-1"})
    [line] = stream.getvalue().splitlines()
    assert line.startswith("[") and "[WARNING] orders.relay: row failed order_id=o-1" in line


def test_level_filters_and_libraries_are_quiet(stream: io.StringIO) -> None:
    logs.configure("text", "warning", "orders")
    capture(stream)
    logging.getLogger("orders").info("hidden")
    logging.getLogger("aiokafka.conn").warning("chatty library")
    logging.getLogger("orders").warning("shown")
    assert stream.getvalue().count("\n") == 1 and "shown" in stream.getvalue()


def test_build_config_is_a_dictconfig_dict(stream: io.StringIO) -> None:
    config = logs.build_config("json", "DEBUG", "worker", loggers={"faust": "WARNING"})
    assert config["version"] == 1 and config["root"]["level"] == "DEBUG"
    assert config["loggers"] == {"faust": {"level": "WARNING"}}
    logging.config.dictConfig(config)
    capture(stream)
    logging.getLogger("streams").debug("hello")
    assert json.loads(stream.getvalue())["service"] == "worker"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.build_config("xml", "INFO", "orders")
