"""Where a new job goes: random over the partitions, its idempotency key's partition when it
has one, and the owner's quota split exactly over the partitions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.placement import Placement


@given(st.integers(1, 64), st.integers(0, 500))
def test_the_quota_shares_add_up_to_the_quota(partitions: int, quota: int) -> None:
    placement = Placement(partitions, quota)
    shares = [placement.share(p) for p in range(partitions)]
    if quota == 0:
        assert shares == [None] * partitions
    else:
        assert sum(s or 0 for s in shares) == quota
        assert max(s or 0 for s in shares) - min(s or 0 for s in shares) <= 1


def test_one_partition_is_always_partition_zero_with_the_whole_quota() -> None:
    assert list(Placement(1, 5).candidates("alice", None)) == [0]
    assert list(Placement(1, 5).candidates("alice", "key")) == [0]
    assert Placement(1, 5).share(0) == 5


def test_a_create_tries_every_partition_that_has_a_share_once() -> None:
    tried = list(Placement(16, 5).candidates("alice", None))
    assert sorted(tried) == [0, 1, 2, 3, 4]  # a quota of 5 over 16: five partitions take jobs
    spread = {next(Placement(8, 0).candidates("alice", None)) for _ in range(400)}
    assert spread == set(range(8))  # random: every partition gets jobs


@pytest.mark.parametrize("quota", [0, 3, 100])
def test_an_idempotency_key_always_names_the_same_partition(quota: int) -> None:
    placement = Placement(16, quota)
    first = list(placement.candidates("alice", "order-42"))
    assert len(first) == 1
    assert all(list(placement.candidates("alice", "order-42")) == first for _ in range(20))
    assert placement.share(first[0]) != 0
    keys = {next(placement.candidates("alice", f"k{n}")) for n in range(400)}
    assert len(keys) == (16 if quota in (0, 100) else 3)  # keys spread over the open partitions
