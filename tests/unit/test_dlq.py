"""streams.ops.dlq without a broker: showing someone else's bytes safely, dead letter ids,
the redrive trust rule, and that every service comes from the registry."""

from __future__ import annotations

import json

import pytest

from streams import registry

from streams.ops import dlq
from streams.ops.dlq import DeadLetter, decide, parse_id, printable, show_bytes

PAID = "events.order.paid.v1"
#: An OSC title change, a bell, clear-screen, a right-to-left override, a zero-width space.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\u202eevil\u200b"


def letter(service: str = "notifications", source: str | None = PAID, *, key: bytes | None = b"o-1",
           value: bytes | None = b"{}", partition: int = 0, offset: int = 7, **extra: bytes) -> DeadLetter:
    headers = {"x-dlq-reason": b"max_attempts", "x-attempt": b"3", **extra}
    if source is not None:
        headers["x-source-topic"] = source.encode()
    return DeadLetter(service, partition, offset, key, value, headers, 1_700_000_000_000, tuple(headers.items()))


def test_printable_escapes_control_and_invisible_characters():
    shown = printable(HOSTILE)
    assert shown == "\\x1b]0;pwned\\x07\\x1b[2J\\u202eevil\\u200b"
    assert all(ch.isprintable() for ch in shown)
    assert printable("line\nnext\ttab \\ back") == "line\\nnext\\ttab \\\\ back"
    assert printable("Zürich ✓ 東京") == "Zürich ✓ 東京"  # printable text stays as it is


def test_show_bytes_escapes_text_and_gives_hex_for_what_is_not_utf8():
    assert show_bytes(HOSTILE.encode()) == printable(HOSTILE)
    assert show_bytes(b"\x80\x81\xff\x00") == "hex:8081ff00"
    assert show_bytes(None) == "<null>"
    assert show_bytes(b"a" * 50, 10) == "a" * 10 + "… (50 bytes)"
    assert "\x1b" not in show_bytes(b"\x1b" * 50, 10)


def test_a_letters_json_has_text_only_with_hex_for_bytes_that_are_not_utf8():
    d = letter(key=HOSTILE.encode(), value=b"\xff\xfe\x00raw", **{"x-error-message": HOSTILE.encode(),
                                                                  "x-bin": b"\xc3\x28"})
    doc = d.to_dict()
    assert doc["key"] == HOSTILE and doc["value"] is None and doc["value_hex"] == "fffe00726177"
    assert {"name": "x-bin", "value": None, "value_hex": "c328"} in doc["headers"]
    text = json.dumps(doc, ensure_ascii=True)
    assert text.isascii() and "\x1b" not in text and "\\u001b" in text
    assert json.loads(text)["error"]["message"] == HOSTILE
    row = d.row()
    assert all(ch.isprintable() for cell in row for ch in cell), row


def test_ids_name_a_registered_services_dlq_partition_and_offset():
    spec, partition, offset = parse_id("inventory.dlq:3:41")
    assert (spec.name, partition, offset) == ("inventory", 3, 41)
    assert letter(partition=2, offset=9).id == "notifications.dlq:2:9"
    for bad in ("nope.dlq:0:1", "notifications.dlq:0", "notifications.dlq:x:1", "notifications.dlq:0:-1",
                "notifications:0:1", ""):
        with pytest.raises(ValueError, match="not a dead letter id"):
            parse_id(bad)


def test_every_service_comes_from_the_registry():
    assert not hasattr(dlq, "SERVICES")  # the old list without inventory is gone
    assert dlq.services_of(None) == registry.SERVICE_NAMES
    assert "inventory" in dlq.services_of(None)
    with pytest.raises(KeyError, match="unknown service"):
        dlq.services_of("billing")


def test_redrive_sends_only_to_the_letters_own_services_sources():
    notifications, inventory = registry.service("notifications"), registry.service("inventory")
    assert decide(notifications, letter(), set()) == ("send", PAID, "")
    # The incident: a notifications letter naming inventory.requests set a SKU's stock to 424242.
    verdict, target, why = decide(notifications, letter(source="inventory.requests"), set())
    assert (verdict, target) == ("refuse", None) and "not a source topic of notifications" in why
    assert decide(notifications, letter(source=None), set())[0] == "refuse"
    assert decide(notifications, letter(source="notifications.dlq"), set())[0] == "refuse"
    # A letter of another service is never redriven under this one's name.
    assert decide(inventory, letter(), set())[0] == "refuse"
    assert decide(inventory, letter("inventory", "inventory.requests"), set()) == (
        "send", "inventory.requests", "")
    # Already redriven: skipped, whatever it says.
    assert decide(notifications, letter(), {"notifications.dlq:0:7"})[0] == "skip"


async def test_redrive_letters_refuses_untrusted_targets_before_touching_kafka():
    seen: list[dlq.Outcome] = []
    result = await dlq.redrive_letters(
        "127.0.0.1:1", "notifications",
        [letter(source="inventory.requests", offset=1), letter(source=None, offset=2)],
        done_before=set(), on_outcome=seen.append, client_kwargs={},
    )
    assert (result.redriven, result.refused) == (0, 2)
    assert [o.action for o in seen] == ["refused", "refused"]
    assert seen[0].to_dict()["source_topic"] == "inventory.requests"


async def test_dry_run_lists_each_letter_with_its_target_and_sends_nothing():
    seen: list[dlq.Outcome] = []
    result = await dlq.redrive_letters(
        "127.0.0.1:1", "notifications", [letter(offset=i) for i in range(5)],
        dry_run=True, limit=3, done_before={"notifications.dlq:0:0"}, on_outcome=seen.append, client_kwargs={},
    )
    assert (result.planned, result.skipped, result.redriven) == (3, 1, 0)
    assert [(o.letter.id, o.action, o.target) for o in seen] == [
        (f"notifications.dlq:0:{i}", "would_redrive", PAID) for i in (1, 2, 3)]


async def test_an_unreachable_broker_is_one_dlq_error():
    with pytest.raises(dlq.DlqError, match=r"^Kafka broker 127\.0\.0\.1:1 unreachable \(KafkaConnectionError\)$"):
        await dlq.page("127.0.0.1:1", "notifications", client_kwargs={})


def test_the_first_live_claim_owns_a_letter():
    """Redrive's claim rule (streams.ops.dlq.Claims): the broker's order decides, and a claim
    left by a runner that died stops holding the letter after the TTL."""
    from streams.ops.dlq import first_live_claim

    ttl = 1000
    assert first_live_claim([], ttl) is None
    assert first_live_claim([(2, 50, "b"), (1, 0, "a")], ttl) == (1, 0, "a")  # offset order, not arrival
    assert first_live_claim([(1, 0, "a"), (2, 999, "b"), (3, 1000, "c")], ttl) == (1, 0, "a")
    assert first_live_claim([(1, 0, "a"), (2, 1001, "b"), (3, 1500, "c")], ttl) == (2, 1001, "b")
    assert first_live_claim([(1, 0, "a"), (2, 1001, "b"), (3, 2002, "c")], ttl) == (3, 2002, "c")


def test_a_claim_record_is_no_redrive():
    from streams.ops.dlq import ledger_kind

    assert ledger_kind(b'{"claim": "r1", "at": 1}') == "claim"
    assert ledger_kind(b'{"to": "events.order.paid.v1", "at": 1}') == "done"
    assert ledger_kind(None) == "done" and ledger_kind(b"") == "done"  # ledgers from before claims
