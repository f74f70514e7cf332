"""Job ids: UUIDv7 (RFC 9562), unguessable, ordered by the time they were made, and naming
the partition the job lives in (:func:`broker.keys.partition_of`)."""

from __future__ import annotations

import os
import time
import uuid

from broker.keys import PARTITION_HEX_DIGITS

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_A_BITS = 12
_RAND_B_BITS = 62
_PARTITION_BITS = 4 * PARTITION_HEX_DIGITS


def new_job_id(partition: int = 0) -> str:
    """A fresh UUIDv7: 48 bits of epoch milliseconds, 62 random bits, and ``partition`` in the
    last 12 bits (its last three hex digits), so a job's keys are found from its id alone.

    The time prefix makes ids sort roughly by creation (handy in logs and Redis scans); the
    62 random bits keep them unguessable. Listing order does not rest on the id: the owner
    index is ordered by a creation sequence the create script assigns.
    """
    if not 0 <= partition < 1 << _PARTITION_BITS:
        raise ValueError(f"partition {partition} does not fit in a job id")
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> (80 - _RAND_A_BITS)
    rand_b = (rand & ((1 << _RAND_B_BITS) - 1)) >> _PARTITION_BITS << _PARTITION_BITS | partition
    value = (ms & ((1 << 48) - 1)) << 80 | _VERSION_7 | rand_a << 64 | _VARIANT_RFC | rand_b
    return str(uuid.UUID(int=value))
