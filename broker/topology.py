"""Where Redis is: one ``JOBSTREAM_REDIS_URL`` for every topology, and redis-py's client for it.

- ``redis://[user:password@]host:port/db`` (and ``rediss://``, ``unix://``): one Redis.
- ``redis+sentinel://host:port,host:port/<primary name>?db=0&password=...``: Redis
  Sentinel, through redis-py's ``Sentinel``. A connection asks the sentinels where the
  primary is when it opens, and a pool asks again at most once a second while its
  connections work (:class:`FollowingSentinelPool`), so every role leaves a replaced
  primary by itself. Query parameters (no others): ``db``, ``username``, ``password``
  (the data nodes'; user info before the hosts works too), ``sentinel_username``,
  ``sentinel_password``.
- ``redis+cluster://host:port,host:port``: Redis Cluster, through redis-py's
  ``RedisCluster`` (any reachable node is enough to find the rest). Query parameters:
  ``username``, ``password`` (or user info).

:func:`open_redis` gives a client of one of these with the caller's connection options
(each role has its own: see ``web.resources``, ``workers.job_broker``, ``broker.api``);
:func:`pubsub_pool` gives the event hub's one-connection pools. Every role calls these, so
one setting moves all of them.
"""

from __future__ import annotations

import re
import time
from contextlib import suppress
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from broker.connection import HiredisConnection, HiredisSentinelConnection

RedisClient: TypeAlias = Redis | RedisCluster
"""A client of any topology: ``Redis`` (one Redis, or Sentinel's primary) or ``RedisCluster``."""

Kind = Literal["single", "sentinel", "cluster"]

_SCHEMES: dict[str, Kind] = {
    "redis": "single",
    "rediss": "single",
    "unix": "single",
    "redis+sentinel": "sentinel",
    "redis+cluster": "cluster",
}
_DEFAULT_PORTS: dict[Kind, int] = {"single": 6379, "sentinel": 26379, "cluster": 6379}
_SENTINEL_PARAMS = ("db", "username", "password", "sentinel_username", "sentinel_password")
"""What a Sentinel URL's query may set (anything else is a typo that would pass silently)."""
_SENTINEL_TIMEOUT_SECONDS = 1.0
"""How long a sentinel may take to say where the primary is (a dead sentinel is skipped)."""
_SENTINEL_RETRIES = 0
"""A sentinel that fails is not asked again: the next one is. (redis-py's default, 10 retries
with backoff, made one dead sentinel cost every primary lookup 3.4 s, and a missing sentinel
password 50 s before the caller heard of it.)"""
FOLLOW_PRIMARY_SECONDS = 1.0
"""How often a Sentinel pool asks where the primary is while its connections work."""


class InvalidRedisUrl(ValueError):
    """``JOBSTREAM_REDIS_URL`` is not one of the three forms (the message says which is wrong)."""


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    """What ``JOBSTREAM_REDIS_URL`` names: its kind, its nodes, and the credentials."""

    kind: Kind
    url: str
    """The URL as given (for one Redis, what redis-py's ``from_url`` takes)."""
    nodes: tuple[tuple[str, int], ...] = ()
    """Sentinels (sentinel) or seed nodes (cluster); empty for one Redis."""
    service: str = ""
    """The primary's name the sentinels monitor (sentinel only)."""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @property
    def cluster(self) -> bool:
        """Whether this is Redis Cluster (keys of one command must share a slot)."""
        return self.kind == "cluster"


def parse_redis_url(url: str) -> Topology:
    """Read ``url`` (see the module's docstring); :class:`InvalidRedisUrl` says what is wrong."""
    scheme = url.partition("://")[0].lower()
    kind = _SCHEMES.get(scheme)
    if kind is None or "://" not in url:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise InvalidRedisUrl(f"JOBSTREAM_REDIS_URL must start with one of {known}: got {shown(url)!r}")
    if kind == "single":
        return Topology(kind=kind, url=url)
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    service = unquote(parts.path.strip("/"))
    if kind == "sentinel" and not service:
        raise InvalidRedisUrl(f"a Sentinel URL names the primary after the hosts (.../main): {shown(url)!r}")
    if kind == "sentinel" and (unknown := sorted(set(query) - set(_SENTINEL_PARAMS))):
        raise InvalidRedisUrl(
            f"a Sentinel URL takes the query parameters {', '.join(_SENTINEL_PARAMS)}; "
            f"not {', '.join(unknown)}: {shown(url)!r}"
        )
    if kind == "cluster" and service:
        raise InvalidRedisUrl(f"a Cluster URL has no path (Cluster has database 0 only): {shown(url)!r}")
    return Topology(
        kind=kind,
        url=url,
        nodes=_nodes(hosts, _DEFAULT_PORTS[kind], url),
        service=service,
        db=_int(query.get("db", "0"), "db", url),
        username=query.get("username") or unquote(username) or None,
        password=query.get("password") or unquote(password) or None,
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
    )


def _nodes(hosts: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise InvalidRedisUrl(f"an empty host in {shown(url)!r}")
        nodes.append((host.strip("[]"), _int(port, "port", url) if port else default_port))
    return tuple(nodes)


def _int(text: str, what: str, url: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidRedisUrl(f"{what} {text!r} is not a number in {shown(url)!r}") from None


def shown(url: str) -> str:
    """``url`` with its passwords (user info, ``*password=`` parameters) replaced by ``***``,
    for error messages and logs."""
    url = re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"((?:^|[?&])[a-z_]*password=)[^&#]*", r"\1***", url)


class FollowingSentinelPool(SentinelConnectionPool):
    """Sentinel's pool, made to leave a primary that the sentinels replaced while it lives.

    redis-py's asyncio pool asks the sentinels only when it opens a connection, so after a
    failover that left the old primary running (``SENTINEL FAILOVER``, a partition that
    healed) every open connection kept writing to it until Sentinel reconfigured it as a
    replica, 10 s later, and what it took then was lost. This pool asks again at most every
    :data:`FOLLOW_PRIMARY_SECONDS` when a connection is taken, and drops a connection to any
    other node when it is taken or given back (what redis-py's sync pool does on release).
    When no sentinel answers, or none knows a healthy primary, it keeps what it knew: a dead
    primary fails its connections anyway, and a live one is still the best guess.
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._next_check = 0.0

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        """Connect ``connection`` (to the primary the sentinels name now), as redis-py does."""
        await self._follow()
        await self._drop_if_elsewhere(connection)
        await super().ensure_connection(connection)

    async def release(self, connection: AbstractConnection) -> None:
        """Take ``connection`` back, closed if it is not to the current primary."""
        await self._drop_if_elsewhere(connection)
        await super().release(connection)

    async def serves(self, connection: AbstractConnection) -> bool:
        """Whether ``connection`` (one that stays taken: a pub/sub reader's) is to the primary
        the sentinels name now; asked of them at most every :data:`FOLLOW_PRIMARY_SECONDS`."""
        await self._follow()
        here = (getattr(connection, "host", None), getattr(connection, "port", None))
        return self.master_address is None or here == self.master_address

    async def _follow(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + FOLLOW_PRIMARY_SECONDS
        with suppress(RedisConnectionError, RedisTimeoutError):  # MasterNotFoundError included
            await self.get_master_address()  # type: ignore[no-untyped-call]  # closes idle ones if it moved

    async def _drop_if_elsewhere(self, connection: AbstractConnection) -> None:
        here = (getattr(connection, "host", None), getattr(connection, "port", None))
        if self.master_address is not None and connection.is_connected and here != self.master_address:
            await connection.disconnect()


class BlockingSentinelPool(FollowingSentinelPool, BlockingConnectionPool):
    """:class:`FollowingSentinelPool` that waits for a free connection when full, as the
    web's plain pool does, instead of raising at once."""


def open_redis(
    topology: Topology,
    *,
    max_connections: int | None = None,
    pool_timeout: float | None = None,
    hiredis: bool = False,
    **options: Any,
) -> RedisClient:
    """A client of ``topology``. ``options`` are redis-py connection options (timeouts,
    ``retry``, ``health_check_interval``...). ``pool_timeout`` makes the pool wait that long
    for a free connection when ``max_connections`` are in use (None: raise at once);
    ``hiredis`` packs commands in C. On Cluster both are redis-py's own behaviour."""
    if topology.kind == "cluster":
        return _cluster(topology, max_connections, options)
    if hiredis:
        options["connection_class"] = (
            HiredisSentinelConnection if topology.kind == "sentinel" else HiredisConnection
        )
    if max_connections is not None:
        options["max_connections"] = max_connections
    if topology.kind == "sentinel":
        pool_class: type[SentinelConnectionPool] = FollowingSentinelPool
        if pool_timeout is not None:
            pool_class, options["timeout"] = BlockingSentinelPool, pool_timeout
        client: Redis = sentinel_of(topology).master_for(
            topology.service, connection_pool_class=pool_class, **options
        )
        return client
    if pool_timeout is not None:
        return Redis.from_pool(BlockingConnectionPool.from_url(topology.url, timeout=pool_timeout, **options))
    return Redis.from_pool(ConnectionPool.from_url(topology.url, **options))


CLIENT_BREAKAGE = (AttributeError, RuntimeError)
"""What redis-py's Cluster client raises from inside a connection another task closed under it
(``'NoneType' object has no attribute 'writelines'``; uvloop's "unable to perform operation on
<TCPTransport closed=True>"): seen when a node restarts under load."""


class _Pipeline(ClusterPipeline):
    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        """redis-py's, with a connection broken under it reported as a ``ConnectionError``."""
        try:
            return await super().execute(*args, **kwargs)
        except CLIENT_BREAKAGE as err:
            raise RedisConnectionError(f"a cluster connection broke: {err!r}") from err


class ClusterClient(RedisCluster):
    """redis-py's ``RedisCluster``, with its failures all ``RedisError``s.

    Every Redis call has a policy: retried, best effort, or a 503 (docs/ARCHITECTURE.md,
    "Faults"). Each policy catches Redis's and the network's errors; an ``AttributeError``
    from inside redis-py's connection handling would instead have reached a task as its own
    failure. So both ways in (a command, a pipeline) report it as a ``ConnectionError``.
    """

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        """redis-py's, with a connection broken under it reported as a ``ConnectionError``."""
        try:
            return await super().execute_command(*args, **kwargs)
        except CLIENT_BREAKAGE as err:
            raise RedisConnectionError(f"a cluster connection broke: {err!r}") from err

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        """redis-py's pipeline, reporting a connection broken under it as a ``ConnectionError``."""
        return _Pipeline(self, transaction)  # type: ignore[abstract]  # as redis-py makes its own


def _cluster(topology: Topology, max_connections: int | None, options: dict[str, Any]) -> RedisCluster:
    options.pop("retry_on_timeout", None)  # not a RedisCluster option; its retry covers timeouts
    return ClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
        username=topology.username,
        password=topology.password,
        max_connections=max_connections or 2**31,
        **options,
    )


def client_retry(redis: RedisClient) -> Retry | None:
    """The retry policy ``redis`` was made with (Cluster keeps it on the client itself)."""
    return redis.retry if isinstance(redis, RedisCluster) else redis.get_retry()


async def slot_command(redis: RedisClient, key: str, *command: EncodableT) -> Any:
    """``command`` (one whose keys all share ``key``'s slot) on the node that serves that slot.

    For a command with movable keys (XREADGROUP) redis-py's Cluster client otherwise asks a
    node which keys the command has (COMMAND GETKEYS) on every call, through one connection
    that concurrent callers share, which broke when a node restarted under several blocked
    readers (a connection used by two at once). Naming the node avoids both. When the node
    fails (moved, failed over, down), a plain keyed read refreshes redis-py's slot map for
    the caller's next try, and the error goes to the caller. On one Redis: the command.
    """
    if not isinstance(redis, RedisCluster):
        return await redis.execute_command(*command)  # type: ignore[no-untyped-call]
    node = redis.get_node_from_key(key)
    try:
        return await redis.execute_command(*command, target_nodes=node)
    except RedisError:
        with suppress(RedisError, OSError, RuntimeError):
            await redis.exists(key)  # redis-py follows MOVED and updates its slot map
        raise


def sentinel_of(topology: Topology) -> Sentinel:
    """redis-py's ``Sentinel`` for ``topology``: the data nodes' db and credentials."""
    return Sentinel(  # type: ignore[no-untyped-call]
        list(topology.nodes),
        sentinel_kwargs={
            "username": topology.sentinel_username,
            "password": topology.sentinel_password,
            "socket_timeout": _SENTINEL_TIMEOUT_SECONDS,
            "socket_connect_timeout": _SENTINEL_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), _SENTINEL_RETRIES),
        },
        db=topology.db,
        username=topology.username,
        password=topology.password,
    )


def pubsub_pool(topology: Topology, node: tuple[str, int] | None = None, **options: Any) -> ConnectionPool:
    """A pool of ONE connection for a pub/sub reader: to the one Redis, to Sentinel's
    current primary, or (Cluster) to ``node``. ``options`` as for :func:`open_redis`."""
    options["max_connections"] = 1
    if topology.kind == "cluster":
        if node is None:
            raise ValueError("a Cluster pub/sub pool needs the node that serves its channels")
        host, port = node
        return ConnectionPool(
            host=host, port=port, username=topology.username, password=topology.password, **options
        )
    if topology.kind == "sentinel":
        # As ``Sentinel.master_for`` builds its pool: the data nodes' db and credentials
        # (``sentinel.connection_kwargs``) under the caller's options.
        sentinel = sentinel_of(topology)
        return FollowingSentinelPool(
            topology.service, sentinel, is_master=True, **{**sentinel.connection_kwargs, **options}
        )
    return ConnectionPool.from_url(topology.url, **options)
