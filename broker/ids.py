"""Job ids: UUIDv7 (RFC 9562), unguessable and ordered by the time they were made."""

from __future__ import annotations

import os
import time
import uuid

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_A_BITS = 12
_RAND_B_BITS = 62


def new_job_id() -> str:
    """A fresh UUIDv7: 48 bits of epoch milliseconds, then 74 random bits.

    The time prefix makes ids sort roughly by creation (handy in logs and Redis scans); the
    74 random bits keep them unguessable. Listing order does not rest on the id: the owner
    index is ordered by a creation sequence the create script assigns.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> (80 - _RAND_A_BITS)
    rand_b = rand & ((1 << _RAND_B_BITS) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | _VERSION_7 | rand_a << 64 | _VARIANT_RFC | rand_b
    return str(uuid.UUID(int=value))
