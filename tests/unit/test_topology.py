"""``JOBSTREAM_REDIS_URL`` in its three forms, and the settings that depend on the topology."""

from __future__ import annotations

import msgspec
import pytest
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.settings import DEFAULT_CLUSTER_PARTITIONS, load_settings
from broker.topology import InvalidRedisUrl, Topology, open_redis, parse_redis_url


def test_a_plain_url_is_one_redis_passed_as_it_is() -> None:
    url = "redis://:secret@10.0.0.5:6380/2?socket_timeout=3"
    assert parse_redis_url(url) == Topology(kind="single", url=url)
    assert parse_redis_url("unix:///run/redis.sock").kind == "single"


def test_a_sentinel_url_names_the_sentinels_the_primary_and_the_credentials() -> None:
    url = "redis+sentinel://s1:26379,s2:26380,s3/mymaster?db=3&password=p%40ss&sentinel_password=sp"
    topology = parse_redis_url(url)
    assert topology.kind == "sentinel"
    assert topology.nodes == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (topology.service, topology.db) == ("mymaster", 3)
    assert (topology.password, topology.sentinel_password) == ("p@ss", "sp")


def test_a_cluster_url_names_seed_nodes_and_user_info_gives_the_password() -> None:
    topology = parse_redis_url("redis+cluster://app:pw@127.0.0.1:7000,[::1]:7001")
    assert topology.cluster
    assert topology.nodes == (("127.0.0.1", 7000), ("::1", 7001))
    assert (topology.username, topology.password) == ("app", "pw")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:6379", "must start with one of"),
        ("http://localhost", "must start with one of"),
        ("redis+sentinel://s1:26379", "names the primary"),
        ("redis+cluster://n1:7000/1", "has no path"),
        ("redis+cluster://n1:port", "is not a number"),
        ("redis+sentinel://s1,,s2/main", "an empty host"),
        ("redis+sentinel://s1/main?db=x", "is not a number"),
        ("redis+sentinel://s1/main?pasword=x", "not pasword"),
        ("redis+sentinel://s1/main?socket_timeout=3", "not socket_timeout"),
    ],
)
def test_a_malformed_url_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(InvalidRedisUrl, match=says):
        parse_redis_url(url)


def test_errors_never_show_a_password() -> None:
    url = "redis+sentinel://app:s3cret@s1,,s2/main?password=pw1&sentinel_password=pw2"
    with pytest.raises(InvalidRedisUrl) as raised:
        parse_redis_url(url)
    message = str(raised.value)
    assert "an empty host" in message
    assert "app:***@" in message and "password=***" in message and "sentinel_password=***" in message
    assert not any(secret in message for secret in ("s3cret", "pw1", "pw2"))


def test_settings_refuse_a_malformed_url_at_start_up() -> None:
    with pytest.raises(msgspec.ValidationError, match="names the primary"):
        load_settings({"JOBSTREAM_REDIS_URL": "redis+sentinel://s1:26379"})


def test_partitions_default_to_one_on_one_redis_and_sixteen_on_cluster() -> None:
    assert load_settings({}).partition_count == 1
    cluster = {"JOBSTREAM_REDIS_URL": "redis+cluster://127.0.0.1:7000"}
    assert load_settings(cluster).partition_count == DEFAULT_CLUSTER_PARTITIONS
    assert load_settings({**cluster, "JOBSTREAM_PARTITIONS": "3"}).partition_count == 3
    with pytest.raises(msgspec.ValidationError, match="partitions"):
        load_settings({"JOBSTREAM_PARTITIONS": "-1"})


def test_create_replicas_is_refused_on_cluster() -> None:
    assert load_settings({"JOBSTREAM_CREATE_REPLICAS": "1"}).create_replicas == 1
    with pytest.raises(msgspec.ValidationError, match="create_replicas"):
        load_settings({"JOBSTREAM_REDIS_URL": "redis+cluster://n:7000", "JOBSTREAM_CREATE_REPLICAS": "1"})


async def test_a_cluster_connection_broken_under_redis_py_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis-py's Cluster client can raise AttributeError from a connection another task closed;
    jobstream's client reports it as the ConnectionError every fault policy handles."""

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    client = open_redis(parse_redis_url("redis+cluster://127.0.0.1:1"))
    monkeypatch.setattr(RedisCluster, "execute_command", broken)
    monkeypatch.setattr(ClusterPipeline, "execute", broken)
    with pytest.raises(RedisConnectionError, match="writelines"):
        await client.execute_command("GET", "k")
    with pytest.raises(RedisConnectionError, match="writelines"):
        await client.pipeline(transaction=False).execute()
