"""An operator's view of every owner: the partitions' indexes of every job, merged for an admin's
listing; an admin's feed of every owner's events; the worker on a job; the created counts.

On one Redis and on a three-primary Cluster (16 partitions), through the real scripts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from broker.keys import partition_of
from broker.models import Job, JobStatus
from broker.scripts import Scripts
from broker.store import GROUP, Delivery, JobStore
from hub.event_hub import EventHub
from scheduler.cleanup import Cleanup
from tests.support.keyspace import stream_of
from web.auth import User
from web.tracebacks import shown_to

pytestmark = [pytest.mark.topologies("single", "cluster"), pytest.mark.timeout(60)]

OWNERS = ("ann", "bob", "cy")


async def make_jobs(store: JobStore, count: int) -> list[Job]:
    """``count`` jobs, their owners taking turns, one after another (creation order is known)."""
    made = []
    for n in range(count):
        job, _ = await store.create(
            task="demo.noop", input_json=b"{}", owner=OWNERS[n % len(OWNERS)], queue="default"
        )
        made.append(job)
    return made


async def test_an_admin_lists_every_owners_jobs_newest_first_in_stable_pages(
    store: JobStore, topology: str
) -> None:
    made = await make_jobs(store, 23)
    assert len({partition_of(job.id) for job in made}) > 1 or topology == "single"
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list(None, limit=5, cursor=cursor)
        seen += [job.id for job in page.jobs]
        if page.cursor is None:
            break
        cursor = page.cursor
        if len(seen) == 10:  # a job made between two pages shows on no later page
            await store.create(task="demo.noop", input_json=b"{}", owner="late", queue="default")
    assert seen == [job.id for job in reversed(made)]
    bob = await store.list("bob", limit=100)
    assert [job.id for job in bob.jobs] == [job.id for job in reversed(made) if job.owner == "bob"]
    failed = await store.list(None, status=JobStatus.FAILURE)
    assert failed.jobs == []


async def test_an_admin_feed_hears_every_owner_and_an_owner_feed_only_its_own(store: JobStore) -> None:
    hub = EventHub(store)
    await hub.start()
    try:
        async with hub.listen_owner(None) as every, hub.listen_owner("bob") as bobs:
            made = await make_jobs(store, 6)
            heard: list[Any] = []
            async with asyncio.timeout(10):
                while len(heard) < len(made):
                    heard.append(await every.next())
            assert {job.id for job in heard} == {job.id for job in made}
            only_bob = [job for job in made if job.owner == "bob"]
            heard_by_bob: list[Any] = []
            async with asyncio.timeout(10):
                while len(heard_by_bob) < len(only_bob):
                    heard_by_bob.append(await bobs.next())
            assert [job.id for job in heard_by_bob] == [job.id for job in only_bob]
            snapshot = await every.snapshot(4)
            assert [job.id for job in snapshot] == [job.id for job in reversed(made)][:4]
    finally:
        await hub.stop()


async def test_the_job_names_its_worker_for_admins_only(store: JobStore, redis: Redis) -> None:
    job, _ = await store.create(task="demo.noop", input_json=b"{}", owner="ann", queue="default")
    stream = stream_of(store, job.id)
    reply: Any = await redis.xreadgroup(GROUP, "host-7-abc", {stream: ">"}, count=1)
    started = await store.start(Delivery(job.id, stream, reply[0][1][0][0].decode(), 1), "host-7-abc")
    assert started is not None
    running = await store.get(job.id)
    assert running.worker == "host-7-abc"
    settings = store.settings
    assert shown_to(running, User("root", admin=True), settings).worker == "host-7-abc"
    assert shown_to(running, User("ann"), settings).worker is None
    assert shown_to(running, User("svc", service=True), settings).worker is None


async def test_creates_are_counted_by_task_type_in_each_partition(store: JobStore, redis: Redis) -> None:
    await make_jobs(store, 5)
    await store.create(task="demo.sleep", input_json=b"{}", owner="ann", queue="default")
    keys = store.keys
    totals: dict[bytes, int] = {}
    for p in range(keys.partitions):
        counts: Any = await redis.hgetall(keys.counts(p))
        for field, value in counts.items():
            totals[field] = totals.get(field, 0) + int(value)
    assert totals == {b"created:demo.noop": 5, b"created:demo.sleep": 1}


async def test_cleanup_prunes_the_index_of_every_job(store: JobStore, redis: Redis) -> None:
    made = await make_jobs(store, 4)
    gone = made[:2]
    for job in gone:
        await redis.delete(store.keys.job(job.id))  # as if its record expired
    counts = await Cleanup(redis, store.settings, Scripts.register(redis, store.keys)).run()
    assert (counts["index"], counts["every_job_index"]) == (2, 2)
    remaining = set()
    for p in range(store.keys.partitions):
        remaining |= {member.decode() for member in await redis.zrange(store.keys.all_jobs(p), 0, -1)}
    assert remaining == {job.id for job in made[2:]}
