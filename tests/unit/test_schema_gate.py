"""The compatibility gate: committed schemas are what the models generate, and a
published ``vN`` never changes beyond title/description (issue 22, item 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import ConfigDict, Field

from streams.events import schemas
from streams.ops.asyncapi import FrozenSchema, export, schema_types
from streams.events import (
    EVENT_TYPES, UPCASTERS, Amount, Event, Id, NotificationSent, OrderPaid, OrderCancelled, chain_gaps,
)


def replaced(old: type[Event], new: type[Event]) -> tuple[type[Event], ...]:
    return tuple(new if t is old else t for t in EVENT_TYPES)


def test_committed_schemas_are_what_the_models_generate():
    committed = {p.name: p.read_text(encoding="utf-8") for p in schemas.SCHEMA_DIR.glob("*.json")}
    generated = schemas.render(schema_types())  # events and internal messages
    stale = sorted(n for n in generated if committed.get(n) != generated[n])
    extra = sorted(set(committed) - set(generated))
    assert not stale and not extra, (
        f"schemas/ is not what the models generate (changed or missing: {stale}; no model: {extra}): "
        "run `faust -A streams schema export` and commit the result")


def test_the_gate_passes_on_the_committed_schemas():
    problems = schemas.gate(schema_types())
    assert problems == [], "\n".join(problems)


def test_exporter_writes_the_committed_files(tmp_path):
    written = [p.relative_to(tmp_path) for p in export(tmp_path)]
    assert sorted(p.name for p in written if p.parent.name == "schemas") == \
        sorted(p.name for p in schemas.SCHEMA_DIR.glob("*.json"))
    assert Path("docs/asyncapi.json") in written
    for p in written:
        assert (tmp_path / p).read_text(encoding="utf-8") == (schemas.ROOT / p).read_text(encoding="utf-8"), p


# -- fixtures: the two ways to change OrderPaid ----------------------------------------------


class OrderPaidWithNote(OrderPaid):
    """OrderPaid v1 with an optional field added: looks harmless, breaks old readers."""

    model_config = ConfigDict(title="OrderPaid")
    note: str | None = None


class OrderPaidV2(Event):
    domain = "order"
    name = "paid"
    schema_version = 2

    version: Literal["v2"] = "v2"
    order_id: Id
    user_id: Id
    amount: Amount
    currency: str = Field(pattern=r"^[A-Z]{3}$")


def paid_v1_to_v2(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {**payload, "version": "v2", "currency": "EUR"}


def test_an_optional_field_added_to_published_order_paid_v1_fails_the_gate():
    problems = schemas.gate(replaced(OrderPaid, OrderPaidWithNote))
    print("\n".join(problems))  # the gate's message, as CI shows it
    assert problems == [
        "order.paid.v1 is published and frozen; new property in a closed schema at $.note: "
        "old readers reject records that carry it (add it in a new version)"]


def test_order_paid_v2_beside_v1_with_an_upcaster_passes_the_gate():
    types = (*EVENT_TYPES, OrderPaidV2)
    assert schemas.gate(types, upcasters={**UPCASTERS, ("order", "paid", 1): paid_v1_to_v2}) == []
    # and the upcaster is what makes it pass: without it the chain has a gap
    assert schemas.gate(types) == [
        "order.paid: v2 has no upcaster from v1 (add UPCASTERS[('order', 'paid', 1)])"]


def test_a_missing_version_below_the_newest_is_a_gap():
    class OrderPaidV3(OrderPaidV2):
        schema_version = 3
    assert chain_gaps((*EVENT_TYPES, OrderPaidV3), {**UPCASTERS, ("order", "paid", 2): paid_v1_to_v2}) == [
        "order.paid: v2 is missing below v3"]


# -- each rule, named ------------------------------------------------------------------------


def changes(old: type[Event], new: type[Event]) -> list[str]:
    return schemas.breaking_changes(schemas.schema_of(old), schemas.schema_of(new))


def test_a_new_required_field_is_named():
    class Paid(OrderPaid):
        model_config = ConfigDict(title="OrderPaid")
        coupon: str
    assert changes(OrderPaid, Paid) == [
        "new required field at $.coupon: old writers do not send it"]


def test_a_removed_property_is_named():
    class Cancelled(Event):
        domain, name = "order", "cancelled"
        order_id: Id
    assert changes(OrderCancelled, Cancelled) == [
        "removed property at $.reason: old writers still send it"]


def test_a_narrowed_property_is_named():
    class Cancelled(OrderCancelled):
        model_config = ConfigDict(title="OrderCancelled")
        reason: str = Field("", max_length=100)
    assert changes(OrderCancelled, Cancelled) == ["narrowed property at $.reason: maxLength 500 became 100"]


def test_a_narrowed_enum_is_named():
    class Sent(NotificationSent):
        model_config = ConfigDict(title="NotificationSent")
        channel: Literal["sms"] = "sms"
    found = changes(NotificationSent, Sent)
    assert found and found[0] == 'narrowed enum at $.channel: "log" no longer allowed'


def test_changed_additional_properties_is_named():
    class Paid(OrderPaid):
        model_config = ConfigDict(title="OrderPaid", extra="ignore")
    assert changes(OrderPaid, Paid) == ["changed additionalProperties at $: False became True"]


def test_a_changed_type_inside_a_definition_is_named():
    class Paid(OrderPaid):
        model_config = ConfigDict(title="OrderPaid")
        user_id: int  # type: ignore[assignment]
    found = changes(OrderPaid, Paid)
    assert any(f.startswith("narrowed property at $.user_id: type 'string' became 'integer'") for f in found), found


def test_title_and_description_may_change():
    class Paid(OrderPaid):
        """Another description."""
        model_config = ConfigDict(title="OrderPaidRenamed")
    assert changes(OrderPaid, Paid) == []
    assert schemas.gate(replaced(OrderPaid, Paid)) == []


# -- the export does not launder a change ----------------------------------------------------


def test_the_export_refuses_to_overwrite_a_published_version_the_model_breaks(tmp_path):
    """Regenerating the committed file would make the gate compare the changed model
    with itself: the export writes nothing and names the rule instead."""
    export(tmp_path)
    committed = (tmp_path / "schemas" / "order.paid.v1.json").read_bytes()
    with pytest.raises(FrozenSchema) as info:
        export(tmp_path, replaced(OrderPaid, OrderPaidWithNote))
    assert str(info.value) == ("order.paid.v1 is published and frozen; new property in a closed schema at $.note: "
                               "old readers reject records that carry it (add it in a new version)")
    assert (tmp_path / "schemas" / "order.paid.v1.json").read_bytes() == committed


def test_the_export_writes_a_new_version_and_a_new_title(tmp_path):
    export(tmp_path)

    class Paid(OrderPaid):
        """Another description."""
        model_config = ConfigDict(title="OrderPaidRenamed")
    export(tmp_path, (*replaced(OrderPaid, Paid), OrderPaidV2))
    assert "OrderPaidRenamed" in (tmp_path / "schemas" / "order.paid.v1.json").read_text()
    assert (tmp_path / "schemas" / "order.paid.v2.json").exists()


def test_jsoncompat_agrees_on_the_fixtures():
    old = schemas.schema_of(OrderPaid)
    assert schemas._jsoncompat_verdict(old, old) == []
    assert schemas._jsoncompat_verdict(old, schemas.schema_of(OrderPaidWithNote)) == ["serializer"]
