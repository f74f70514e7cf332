"""A real Redis Cluster on loopback for the tests and the benchmarks: three primaries (by
default), made with ``redis-cli --cluster create`` (Debian's ``redis-server`` and ``redis-cli``).

Each node is an :class:`~devtools.embedded_redis.EmbeddedRedis` with cluster mode on. A
node's cluster bus listens on its port + 10000, so a node's port is picked with that one
free too. :meth:`ClusterServers.url` is the ``redis+cluster://`` URL of all three.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from devtools.embedded_redis import HOST, EmbeddedRedis, free_port, port_is_free

_BUS_OFFSET = 10_000
_READY_SECONDS = 30.0


class ClusterNode(EmbeddedRedis):
    """One cluster-mode ``redis-server``, configured as :class:`EmbeddedRedis` (AOF on)."""

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.data_dir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip


def _port_with_free_bus() -> int:
    for _ in range(50):
        port = free_port()
        if port + _BUS_OFFSET < 65_536 and port_is_free(port + _BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterServers:
    """Three primaries, their 16,384 slots split evenly; a context manager."""

    def __init__(self, data_dir: Path, primaries: int = 3, node: type[ClusterNode] = ClusterNode) -> None:
        self.nodes = [node(_port_with_free_bus(), data_dir / f"node{n}") for n in range(primaries)]

    @property
    def pids(self) -> list[int]:
        """The nodes' process ids."""
        return [node.pid for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node."""
        return "redis+cluster://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def start(self) -> Self:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH (Debian: apt-get install redis-tools)")
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        subprocess.run(  # fixed argv, no shell
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=_READY_SECONDS,
        )
        self._wait_until_ok()
        return self

    def _wait_until_ok(self) -> None:
        """Every node says ``cluster_state:ok`` and knows every other one."""
        deadline = time.monotonic() + _READY_SECONDS
        while time.monotonic() < deadline:
            if all(self._ok(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the cluster was not ok within {_READY_SECONDS:g}s")

    def _ok(self, node: ClusterNode) -> bool:
        with redis.Redis(host=HOST, port=node.port, socket_timeout=2, decode_responses=True) as client:
            info: dict[str, str] = client.cluster("INFO")
            return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == len(
                self.nodes
            )

    def error_counts(self, error: str) -> dict[int, int]:
        """How often each node (by port) answered ``error`` (``INFO errorstats``)."""
        counts = {}
        for node in self.nodes:
            with redis.Redis(host=HOST, port=node.port, socket_timeout=2, decode_responses=True) as client:
                stats: dict[str, dict[str, str]] = client.info("errorstats")
            counts[node.port] = int(stats.get(f"errorstat_{error}", {}).get("count", 0))
        return counts

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
