"""How a key maps to a partition: Kafka's default partitioner (murmur2 of the key
bytes, as the Java client and aiokafka choose), pure arithmetic.

The engine uses it to send a record that arrived on a partition its key does not map
to back to the right one (:mod:`streams.engine.position`), so every record of a key is
processed where the key's state is; the publisher uses it to place records without an
explicit partition.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` (the default partitioner's hash), 4 bytes at a time."""
    length = len(data)
    h = 0x9747B28C ^ length
    n4 = length >> 2
    if n4:
        for k in struct.unpack_from(f"<{n4}I", data):
            k = (k * _M) & _MASK
            k = ((k ^ (k >> 24)) * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest:
        i = n4 << 2
        if rest == 3:
            h ^= data[i + 2] << 16
        if rest >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


#: key → murmur2, for the keys seen lately: one order's id is hashed for each of its
#: events on every topic (six to ten times over its lifecycle), and a hash costs ~3 µs.
_HASHES: dict[bytes, int] = {}
_HASHES_MAX = 200_000
_CACHED_KEY_MAX = 64  # bytes: bounds the cache to ~30 MB whatever the keys are


def key_partition(key: bytes | None, count: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``count`` (a
    record without a key goes to partition 0 here: ours always have keys)."""
    if key is None:
        return 0
    if len(key) > _CACHED_KEY_MAX:  # a hostile key's size must not grow the cache
        return (murmur2(key) & 0x7FFFFFFF) % count
    h = _HASHES.get(key)
    if h is None:
        if len(_HASHES) >= _HASHES_MAX:
            _HASHES.clear()
        h = _HASHES[key] = murmur2(key) & 0x7FFFFFFF
    return h % count
