"""streams.faust.recovery.BulkLoader writes a fetch's index entries as the live worker had
them: an entry the changelog tombstoned after the value it came from stays deleted."""

from __future__ import annotations

from types import SimpleNamespace

import rocksdict

from agents.order_state import OrderStateService
from streams.engine.ports import index_key
from streams.faust.recovery import BulkLoader, Progress


def test_an_index_entry_tombstoned_after_its_value_stays_deleted(tmp_path) -> None:
    """Regression: an order's parked event applied, its index entry unscheduled (a
    tombstone in the changelog); a wiped-dir recovery whose fetch held the old state
    and the tombstone wrote the entry back after the tombstone."""
    db = rocksdict.Rdict(str(tmp_path / "order-state-0.db"), options=rocksdict.Options(raw_mode=True))
    table = SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: "order-state-changelog"),
                            data=SimpleNamespace(offset_key=b"__faust\x00offset__", _db_for_partition=lambda p: db))
    service = OrderStateService(park_timeout=1)
    loader = BulkLoader({"order-state": table}, bootstrap="", client_kwargs={},
                        indexers=service.indexers(), progress=Progress(),
                        max_fetch_bytes=1 << 20, budget=1.0)
    parked = (b'{"order_id":"o-1","status":"NEW","reservation":"PENDING","version":0,"history":[],'
              b'"parked":{"OrderPaid":{"id":"e","at":null,"t":"x","p":0,"o":0,"ts":1,"v":"{}","since":1000}}}')
    applied = b'{"order_id":"o-1","status":"PAID","reservation":"PENDING","version":2,"history":[],"parked":{}}'
    still = parked.replace(b"o-1", b"o-2")
    records = [SimpleNamespace(key=b"o-1", value=parked, offset=0),
               SimpleNamespace(key=b"o-2", value=still, offset=1),
               SimpleNamespace(key=b"o-1", value=applied, offset=2),
               SimpleNamespace(key=index_key(1000, b"o-1"), value=None, offset=3)]
    tp = SimpleNamespace(topic="order-state-changelog", partition=0)
    assert loader._apply(tp, records) == 3
    assert index_key(1000, b"o-1") not in db
    assert db[index_key(1000, b"o-2")] == b"1"  # an entry nothing tombstoned is kept
    assert db[b"o-1"] == applied
    db.close()
