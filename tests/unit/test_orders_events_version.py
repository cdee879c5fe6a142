"""The order service writes OrderCreated v1 or v2 as ORDER_EVENTS_VERSION says (issue 22)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from orders.settings import load_orders_settings
from streams.settings import SettingsError
from streams.events import OrderCreated, OrderCreatedV2
from tests.unit.test_orders_api import VALID, open_ctx


async def test_v1_by_default(tmp_path: Path) -> None:
    async with open_ctx(tmp_path / "o.db") as ctx:
        order_id = await ctx.create()
        [row] = await ctx.outbox_rows()
    assert row["topic"] == "events.order.created.v1"
    event = OrderCreated.model_validate_json(row["payload"])
    assert event.order_id == order_id and "currency" not in json.loads(row["payload"])


async def test_v2_when_told_with_the_configured_currency(tmp_path: Path) -> None:
    async with open_ctx(tmp_path / "o.db", order_events_version=2, currency="SEK") as ctx:  # type: ignore[arg-type]
        order_id = await ctx.create()
        [row] = await ctx.outbox_rows()
    assert row["topic"] == "events.order.created.v2" and row["key"] == order_id.encode()
    event = OrderCreatedV2.model_validate_json(row["payload"])
    assert event.version == "v2" and event.currency == "SEK" and event.amount == Decimal("12.50")
    assert [(i.sku, i.qty, i.unit_price) for i in event.items] == [
        (i["sku"], i["qty"], None) for i in VALID["items"]]


def test_the_settings_take_1_or_2_and_a_currency_code(monkeypatch, capsys) -> None:
    monkeypatch.setenv("ORDER_EVENTS_VERSION", "2")
    monkeypatch.setenv("DEFAULT_CURRENCY", "USD")
    s = load_orders_settings()
    assert (s.order_events_version, s.default_currency) == (2, "USD")
    for name, bad in (("ORDER_EVENTS_VERSION", "3"), ("DEFAULT_CURRENCY", "usd")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SettingsError):
            load_orders_settings()
        assert name in capsys.readouterr().err
        monkeypatch.setenv(name, {"ORDER_EVENTS_VERSION": "2", "DEFAULT_CURRENCY": "USD"}[name])
