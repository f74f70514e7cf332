"""``redis+sentinel://`` against real sentinels: the URL's forms, every client the roles open,
and the ways a client can find itself on the wrong node.

One password-protected set-up (data nodes and sentinels each with a password) serves the
module; the test that fails the primary over has a set-up of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.api import Jobstream
from broker.keys import Keys
from broker.models import JobStatus
from broker.settings import load_settings
from broker.store import JobStore
from broker.topology import FollowingSentinelPool, parse_redis_url, pubsub_pool
from devtools.embedded_redis import free_port
from hub.subscriptions import ShardSubscriptions
from tests.support.sentinel_servers import SERVICE, SentinelServers
from web.resources import open_web_redis

pytestmark = pytest.mark.timeout(60)

DATA_PASSWORD = "data-pass"
SENTINEL_PASSWORD = "sentinel-pass"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelServers]:
    """A primary, a replica and three sentinels, all behind passwords."""
    servers = SentinelServers(
        tmp_path_factory.mktemp("sentinels"), password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD
    )
    with servers:
        yield servers


def url_of(servers: SentinelServers, **query: str) -> str:
    return servers.sentinel_url(password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD, **query)


@pytest_asyncio.fixture
async def js(guarded: SentinelServers, prefix: str) -> AsyncIterator[Jobstream]:
    settings = load_settings({}, redis_url=url_of(guarded), prefix=prefix, task_modules="workers.tasks")
    async with Jobstream.from_settings(settings) as api:
        yield api


async def on_node(servers: SentinelServers, key: str, db: int = 0) -> bool:
    """Whether the primary (asked directly, not through Sentinel) holds ``key`` in ``db``."""
    primary = servers.primary()
    client = Redis(port=primary.port, password=servers.password, db=db, socket_timeout=5)
    try:
        return bool(await client.exists(key))
    finally:
        await client.aclose()


async def test_the_public_api_and_its_event_hub_work_through_sentinels_with_passwords(
    js: Jobstream, guarded: SentinelServers
) -> None:
    job = await js.submit("demo.noop", {}, owner="alice")
    assert await on_node(guarded, js.store.keys.job(job.id))
    seen: list[JobStatus] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for state in js.follow(job.id, owner="alice"):  # the hub's own pool: credentials too
            seen.append(state.status)
            first.set()
            if state.terminal:
                return

    following = asyncio.create_task(follow())
    await asyncio.wait_for(first.wait(), 10)
    await js.cancel(job.id, owner="alice")  # an event the hub must hear on the primary
    await asyncio.wait_for(following, 10)
    assert seen == [JobStatus.PENDING, JobStatus.CANCELLED]


@pytest.mark.parametrize(
    "form",
    [
        "user info",  # redis+sentinel://:password@hosts/name?sentinel_password=...
        "query",  # ...?password=...&sentinel_password=...
    ],
)
async def test_the_data_password_may_come_as_user_info_or_query(
    guarded: SentinelServers, prefix: str, form: str
) -> None:
    if form == "query":
        url = url_of(guarded, db="2")
    else:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in guarded.sentinels)
        url = (
            f"redis+sentinel://:{DATA_PASSWORD}@{hosts}/{SERVICE}?db=2&sentinel_password={SENTINEL_PASSWORD}"
        )
    settings = load_settings({}, redis_url=url, prefix=prefix, task_modules="workers.tasks")
    async with Jobstream.from_settings(settings) as api:
        job = await api.submit("demo.noop", {}, owner="bob")
        assert await on_node(guarded, api.store.keys.job(job.id), db=2)
        assert not await on_node(guarded, api.store.keys.job(job.id), db=0)


async def test_a_dead_sentinel_listed_first_is_skipped(guarded: SentinelServers, prefix: str) -> None:
    hosts = ",".join([f"127.0.0.1:{free_port()}", *(f"127.0.0.1:{s.port}" for s in guarded.sentinels)])
    url = f"redis+sentinel://{hosts}/{SERVICE}?password={DATA_PASSWORD}&sentinel_password={SENTINEL_PASSWORD}"
    settings = load_settings({}, redis_url=url, prefix=prefix, task_modules="workers.tasks")
    async with Jobstream.from_settings(settings) as api:
        job = await api.submit("demo.noop", {}, owner="carol")
        assert (await api.get(job.id, owner="carol")).id == job.id


async def test_wrong_or_missing_credentials_are_a_connection_error(guarded: SentinelServers) -> None:
    """What the web answers 503 (and workers wait out), never a crash or a 500."""
    for url in (
        guarded.sentinel_url(password=DATA_PASSWORD),  # no sentinel password: no primary found
        guarded.sentinel_url(password="wrong", sentinel_password=SENTINEL_PASSWORD),
    ):
        redis = open_web_redis(parse_redis_url(url))
        try:
            with pytest.raises(RedisConnectionError):
                await redis.ping()
        finally:
            await redis.aclose()


async def test_every_pool_a_role_opens_is_one_that_follows_the_primary(guarded: SentinelServers) -> None:
    topology = parse_redis_url(url_of(guarded))
    web = open_web_redis(topology)
    hub = pubsub_pool(topology, client_name="probe")
    try:
        assert isinstance(web.connection_pool, FollowingSentinelPool)
        assert isinstance(hub, FollowingSentinelPool)
        assert await web.ping()
        connection = await hub.get_connection()
        await hub.release(connection)
        assert (connection.host, connection.port) == ("127.0.0.1", guarded.primary().port)
    finally:
        await web.aclose()
        await hub.aclose()


async def test_a_connection_that_lands_on_a_replica_is_a_blip_not_an_error(
    guarded: SentinelServers, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale answer (a sentinel that has not heard of a failover yet) sends the client to a
    replica: the create script answers READONLY there, which redis-py's Sentinel connection
    turns into a connection error; the create is sent again, to the primary, and succeeds."""
    replica = next(node for node in guarded.nodes if node.role() == "slave")
    real = Sentinel.discover_master
    stale = [("127.0.0.1", replica.port)] * 2  # the pool's check, then the connection's own

    def readonly_replies() -> int:
        with replica.client() as client:
            stats: Any = client.info("errorstats")
        return int(stats.get("errorstat_READONLY", {}).get("count", 0))

    refused_before = readonly_replies()

    async def discover(self: Sentinel, service_name: str) -> Any:
        return stale.pop() if stale else await real(self, service_name)

    monkeypatch.setattr(Sentinel, "discover_master", discover)
    settings = load_settings({}, redis_url=url_of(guarded), prefix=prefix)
    redis = open_web_redis(settings.topology)
    try:
        job, created = await JobStore(redis, settings).create(
            task="demo.noop", input_json=b"{}", owner="dave", queue="default"
        )
        assert created and not stale
        assert readonly_replies() > refused_before  # it went to the replica first
        assert await on_node(guarded, Keys(prefix).job(job.id))
    finally:
        await redis.aclose()


async def test_clients_leave_a_replaced_primary_that_still_runs_within_about_a_second(
    tmp_path: Path, prefix: str
) -> None:
    """``SENTINEL FAILOVER`` promotes the replica while the old primary keeps running; Sentinel
    reconfigures the old one (and closes its clients) only about 10 s later. Until then a
    client that stayed on it writes where the writes will be lost. Ours move within about
    ``FOLLOW_PRIMARY_SECONDS``, long before that."""
    with SentinelServers(tmp_path / "sentinels") as servers:
        settings = load_settings({}, redis_url=servers.sentinel_url(), prefix=prefix)
        redis = open_web_redis(settings.topology)
        store = JobStore(redis, settings)
        create = {"task": "demo.noop", "input_json": b"{}", "owner": "erin", "queue": "default"}
        try:
            await store.create(**create)  # a pooled connection to the first primary
            old = servers.primary()
            with servers.sentinels[0].client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
            new = await asyncio.to_thread(servers.until_failed_over, old)
            switched = time.monotonic()

            async def lands_on_the_new_primary() -> bool:
                job, _ = await store.create(**create)
                return await on_node(servers, store.keys.job(job.id))

            while not await lands_on_the_new_primary():
                assert time.monotonic() - switched < 5, "creates still go to the replaced primary"
                await asyncio.sleep(0.1)
            followed = time.monotonic() - switched
            assert old.role() == "master", "Sentinel had already reconfigured the old primary"
            print(f"\nmanual failover {old.port} -> {new.port}: creates followed in {followed:.2f} s")
        finally:
            await redis.aclose()


async def test_the_event_hub_leaves_a_replaced_primary_that_still_runs_within_about_a_second(
    tmp_path: Path, prefix: str
) -> None:
    """The pub/sub reader as well: nothing is published on the old primary once every client
    moved, so a reader that stayed there would hear nothing until Sentinel reconfigures it.
    It asks every second while idle, moves, and its reader re-reads what it follows."""
    with SentinelServers(tmp_path / "sentinels") as servers:
        settings = load_settings({}, redis_url=servers.sentinel_url(), prefix=prefix)
        redis = open_web_redis(settings.topology)
        channel = settings.keys.events(0)
        heard: asyncio.Queue[bytes] = asyncio.Queue()
        resynced = asyncio.Event()

        async def on_resubscribed(_channels: list[str]) -> None:
            resynced.set()

        hub = ShardSubscriptions(
            settings.topology,
            redis,
            [channel],
            lambda _channel, data: heard.put_nowait(data),
            on_resubscribed,
            client_name="test-hub",
            connect_timeout=5.0,
        )
        await hub.start()
        try:
            await asyncio.wait_for(hub.subscriptions[0].confirmed.wait(), 5)
            old = servers.primary()
            with servers.sentinels[0].client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
            new = await asyncio.to_thread(servers.until_failed_over, old)
            switched = time.monotonic()
            await asyncio.wait_for(resynced.wait(), 5)
            moved = time.monotonic() - switched
            assert old.role() == "master", "Sentinel had already reconfigured the old primary"
            publisher = Redis(port=new.port, socket_timeout=5)
            try:
                await publisher.spublish(channel, b"on the new primary")
            finally:
                await publisher.aclose()
            assert await asyncio.wait_for(heard.get(), 5) == b"on the new primary"
            print(f"\nmanual failover {old.port} -> {new.port}: the hub followed in {moved:.2f} s")
        finally:
            await hub.stop()
            await redis.aclose()
