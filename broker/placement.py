"""Which partition a new job goes to, and each partition's share of an owner's quota.

A job without an idempotency key goes to a random partition, spreading one owner's load
over every partition (and so, on Cluster, over every primary). A job with one goes to the
partition the key names, so that its replays find it there. The active-job quota
(``max_active_per_owner``) is split over the partitions, the shares adding up to it
exactly, so each create script enforces its partition's share alone, with no read across
slots; a create whose share is used up tries the next partition. See docs/ARCHITECTURE.md,
"Partitions".
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator


class Placement:
    """Partition choice for ``partitions`` partitions and a quota of ``quota`` (0: none)."""

    __slots__ = ("partitions", "quota")

    def __init__(self, partitions: int, quota: int) -> None:
        self.partitions = partitions
        self.quota = quota

    def share(self, partition: int) -> int | None:
        """The owner's active-job quota in ``partition``; None: no quota. With a quota below
        the partition count, some partitions have none (0) and take no job."""
        if self.quota <= 0:
            return None
        return self.quota // self.partitions + (1 if partition < self.quota % self.partitions else 0)

    def candidates(self, owner: str, idempotency_key: str | None) -> Iterator[int]:
        """The partitions a create tries, in order: a random one, then each other one (while
        the previous answered QUOTA). With an idempotency key: the one partition it names."""
        if self.partitions == 1:
            return iter((0,))
        open_ = [p for p in range(self.partitions) if self.share(p) != 0]
        if idempotency_key:
            return iter((open_[_stable_hash(owner, idempotency_key) % len(open_)],))
        first = random.randrange(len(open_))  # noqa: S311 - spreading load, not a secret
        return (open_[(first + n) % len(open_)] for n in range(len(open_)))


def _stable_hash(owner: str, idempotency_key: str) -> int:
    """The same number for the same owner and key in every process (``hash()`` is salted)."""
    return int.from_bytes(hashlib.sha256(f"{owner}\0{idempotency_key}".encode()).digest()[:4], "big")
