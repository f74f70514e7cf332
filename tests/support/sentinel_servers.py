"""Replicated Redis on 127.0.0.1 for the tests: a primary and its replicas (``ReplicaSet``),
and with three sentinels watching them (``SentinelServers``).

Debian's ``redis-server`` and ``redis-sentinel`` as child processes, each in a folder of its
own under the test's temporary directory, stopped by PID like ``EmbeddedRedis``. Optional
passwords: ``password`` for the data nodes (``requirepass`` and ``masterauth``, since any
node may become the primary), ``sentinel_password`` for the sentinels themselves.

``start`` returns once the replicas confirm writes and every sentinel knows the primary,
every replica and the other sentinels, so a failover can happen at once. ``frozen``
SIGSTOPs a node for a block, ``kill_primary`` SIGKILLs the primary, ``until_failed_over``
waits until every sentinel names a new one and that node says it is the primary,
``restart_as_replica`` brings a killed node back as a replica of the current primary (as an
operator would), and ``until_replicated`` waits until the primary has that many replicas
confirming writes. Every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.embedded_redis import HOST, EmbeddedRedis
from tests.support.polling import wait_for

SERVICE = "jobstream"
DOWN_AFTER_MS = 1000
"""How long a primary must be silent before a sentinel thinks it down: the failover's floor."""
FAILOVER_TIMEOUT_MS = 10_000


def _client(port: int, password: str | None) -> redis.Redis:
    return redis.Redis(
        host=HOST,
        port=port,
        password=password,
        socket_connect_timeout=0.5,
        socket_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


class _GuardedNode(EmbeddedRedis):
    """A server of the set whose clients may need a password (``auth``, None: none)."""

    auth: str | None = None

    def client(self) -> redis.Redis:
        """A short-timeout client of this node (strings back)."""
        return _client(self.port, self.auth)

    def _is_ours_and_ready(self, pid: int) -> bool:
        """As ``EmbeddedRedis``'s check, with this node's password."""
        with self.client() as client:
            try:
                return int(client.info("server")["process_id"]) == pid
            except redis.RedisError:
                return False


class DataNode(_GuardedNode):
    """A ``redis-server`` of the set (AOF fsynced every second, Redis's default), optionally
    a replica of ``replica_of`` (a port), optionally with a password."""

    def __init__(self, data_dir: Path, *, password: str | None, replica_of: int | None = None) -> None:
        super().__init__(data_dir=data_dir)
        self.password = self.auth = password
        self.replica_of = replica_of

    def command(self) -> list[str]:
        argv = [*super().command(), "--repl-diskless-sync-delay", "0"]  # no 5 s wait before a sync
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            argv += ["--replicaof", HOST, str(self.replica_of)]
        return argv

    def role(self) -> str:
        """``master`` or ``slave`` (the node's own word), or ``down``."""
        with self.client() as client:
            try:
                return str(client.info("replication")["role"])
            except redis.RedisError:
                return "down"


class SentinelNode(_GuardedNode):
    """A ``redis-sentinel`` monitoring ``SERVICE`` at ``primary_port``; its config file (which
    Sentinel rewrites as it learns) lives in its folder."""

    def __init__(
        self, data_dir: Path, primary_port: int, *, password: str | None, sentinel_password: str | None
    ) -> None:
        super().__init__(data_dir=data_dir)
        self.primary_port = primary_port
        self.password = password
        self.sentinel_password = self.auth = sentinel_password

    def command(self) -> list[str]:
        config = self.data_dir / "sentinel.conf"
        lines = [
            f"port {self.port}",
            f"bind {HOST}",
            "protected-mode no",
            "daemonize no",
            f"dir {self.data_dir}",
            f"sentinel monitor {SERVICE} {HOST} {self.primary_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        if self.sentinel_password:
            secret = self.sentinel_password
            lines += [f"requirepass {secret}", f"sentinel sentinel-pass {secret}"]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config.write_text("\n".join(lines) + "\n")
        return ["redis-sentinel", str(config)]

    def primary_address(self) -> tuple[str, int] | None:
        """Where this sentinel says the primary is (None: it cannot be asked)."""
        with self.client() as client:
            try:
                found: Any = client.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                return None
        return (str(found[0]), int(found[1])) if found else None

    def knows_everyone(self, replicas: int, sentinels: int) -> bool:
        """The primary is up, and this sentinel sees ``replicas`` replicas and the other sentinels."""
        with self.client() as client:
            try:
                state: Any = client.sentinel_master(SERVICE)
                known: Any = client.sentinel_slaves(SERVICE)
            except redis.RedisError:
                return False
        healthy = [r for r in known if r["flags"] == "slave"]
        return (
            state["flags"] == "master"
            and len(healthy) >= replicas
            and int(state["num-other-sentinels"]) == sentinels - 1
        )


@dataclass
class ReplicaSet:
    """A primary and ``replicas`` replicas on 127.0.0.1, no sentinel; a context manager.

    ``nodes[0]`` starts as the primary. :meth:`frozen` SIGSTOPs a node for a while (a
    replica that stops acknowledging, without a disconnect anyone would notice).
    """

    base_dir: Path
    replicas: int = 1
    password: str | None = None
    nodes: list[DataNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis://`` of the first primary (for a set without sentinels)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.nodes[0].port}/0"

    def start(self, timeout: float = 20.0) -> Self:
        try:
            primary = self._start_node(self.base_dir / "node-0", None)
            for index in range(1, self.replicas + 1):
                self._start_node(self.base_dir / f"node-{index}", primary.port)
            self.until_replicated(self.replicas, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, data_dir: Path, replica_of: int | None) -> DataNode:
        node = DataNode(data_dir, password=self.password, replica_of=replica_of)
        self.nodes.append(node.start())
        return node

    def stop(self) -> None:
        for server in self.nodes:
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @contextmanager
    def frozen(self, node: DataNode) -> Iterator[None]:
        """``node`` SIGSTOPped for the block (SIGCONT after it, whatever happens)."""
        os.kill(node.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(node.pid, signal.SIGCONT)

    def until_replicated(self, count: int, timeout: float = 20.0) -> None:
        """Wait until the node that says it is primary has ``count`` replicas that confirm a write.

        "online" alone is not enough: after a diskless sync the primary streams writes to a
        replica only from its first acknowledgement, up to a second later.
        """

        def online() -> bool:
            for node in self.nodes:
                with node.client() as client:
                    try:
                        if client.info("replication")["role"] != "master":
                            continue
                        client.publish("replication-check", "")  # a write of this connection's...
                        return int(client.wait(count, 100)) >= count  # ...that replicas confirm
                    except redis.RedisError:
                        continue
            return False

        wait_for(online, timeout, f"{count} replica(s) online", self.logs)

    def logs(self) -> str:
        """The tail of every server's log, for a failure message."""
        parts = []
        for server in self.servers():
            text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
            parts.append(f"--- {server.log_path}:\n{text[-1500:]}")
        return "\n".join(parts)

    def servers(self) -> list[EmbeddedRedis]:
        return list(self.nodes)


@dataclass
class SentinelServers(ReplicaSet):
    """A primary, ``replicas`` replicas and three sentinels, all on 127.0.0.1; a context manager."""

    sentinel_password: str | None = None
    sentinels: list[SentinelNode] = field(default_factory=list)

    def sentinel_url(self, **query: str) -> str:
        """``redis+sentinel://`` naming the three sentinels and ``SERVICE``, with ``query``."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        params = "&".join(f"{name}={value}" for name, value in query.items())
        return f"redis+sentinel://{hosts}/{SERVICE}" + (f"?{params}" if params else "")

    def start(self, timeout: float = 20.0) -> Self:
        super().start(timeout)
        try:
            for index in range(3):
                sentinel = SentinelNode(
                    self.base_dir / f"sentinel-{index}",
                    self.nodes[0].port,
                    password=self.password,
                    sentinel_password=self.sentinel_password,
                )
                self.sentinels.append(sentinel.start())
            wait_for(
                lambda: all(s.knows_everyone(self.replicas, 3) for s in self.sentinels),
                timeout,
                "every sentinel to know the primary, its replicas and the other sentinels",
                self.logs,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        super().stop()

    def servers(self) -> list[EmbeddedRedis]:
        return [*self.nodes, *self.sentinels]

    # -- who is the primary ------------------------------------------------------------------

    def primary(self) -> DataNode:
        """The node the sentinels name as the primary (they must agree)."""
        addresses = {s.primary_address() for s in self.sentinels}
        assert len(addresses) == 1, f"the sentinels disagree: {addresses}"
        (address,) = addresses
        assert address is not None
        return self.node_at(address[1])

    def node_at(self, port: int) -> DataNode:
        (node,) = [n for n in self.nodes if n.port == port]
        return node

    def kill_primary(self) -> DataNode:
        """SIGKILL the primary (by PID) and wait until it is gone; returns it."""
        node = self.primary()
        os.kill(node.pid, signal.SIGKILL)
        wait_for(lambda: node.poll() is not None, 10, "the primary to die")
        node.stop()  # closes its log; the process is gone already
        return node

    def until_failed_over(self, old: DataNode, timeout: float = 30.0) -> DataNode:
        """Wait until every sentinel names a primary other than ``old`` and it says it is one."""

        def promoted() -> DataNode | None:
            addresses = {s.primary_address() for s in self.sentinels}
            if len(addresses) != 1:
                return None
            (address,) = addresses
            if address is None or address[1] == old.port:
                return None
            node = self.node_at(address[1])
            return node if node.role() == "master" else None

        return wait_for(promoted, timeout, "the sentinels to promote a replica", self.logs)

    def restart_as_replica(self, node: DataNode, timeout: float = 20.0) -> None:
        """Start a stopped node again on its port, as a replica of the current primary."""
        node.replica_of = self.primary().port
        node.start()
        self.until_replicated(self.replicas, timeout)

    def sentinel_events(self, event: str) -> list[str]:
        """The log lines of every sentinel that name ``event`` (``+switch-master``, ``+sdown``...)."""
        return [
            line
            for s in self.sentinels
            if s.log_path.exists()
            for line in s.log_path.read_text(errors="replace").splitlines()
            if f" {event} " in line
        ]
