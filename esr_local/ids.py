"""Sortable unique ids for runs (ULID layout, lower case).

An id is 26 Crockford base32 characters: 48 bits of Unix time in milliseconds followed by 80 random
bits. Ids therefore sort by creation time as plain strings, and ids made on different machines (shard
databases that are merged later) do not collide. Within one process ids are strictly increasing even
when several are made in the same millisecond.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32 (no i, l, o, u)
_RANDOM_BITS = 80
_lock = threading.Lock()
_last: tuple[int, int] = (-1, 0)


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id() -> str:
    """A new 26-character, time-sortable, lower-case ULID-style id."""
    global _last
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_random = _last
        if ms <= last_ms:
            # Same (or an earlier, if the clock stepped back) millisecond: keep order by counting up.
            ms, rand = last_ms, last_random + 1
            if rand >= 1 << _RANDOM_BITS:  # 2**80 ids in one millisecond: wait for the next one
                ms, rand = last_ms + 1, secrets.randbits(_RANDOM_BITS - 1)
        else:
            # One bit of headroom so the counter above cannot overflow in practice.
            rand = secrets.randbits(_RANDOM_BITS - 1)
        _last = (ms, rand)
    return _encode(ms, 10) + _encode(rand, 16)


def id_time_ms(run_id: str) -> int:
    """The Unix time in milliseconds encoded in the first 10 characters of an id from `new_id`."""
    value = 0
    for char in run_id[:10].lower():
        value = value * 32 + _ALPHABET.index(char)
    return value
