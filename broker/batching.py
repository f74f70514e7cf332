"""Sends script calls to Redis as pipelines, without waiting for a batch to fill.

A worker running many jobs at once issues their start and finish scripts at nearly the
same moment; a web process does the same with concurrent creates. The batcher keeps at
most ``max_in_flight`` pipelines outstanding: a call made while the line is free goes out
at the end of the current loop turn (with whatever else that turn produced), and calls
made while pipelines are outstanding wait for one to come back and then all go together.
An idle system pays no added latency; a busy one sends fewer, larger pipelines, saving a
round trip and most of redis-py's per-command work for every call after the first.

A batch goes out as a pipeline would, without redis-py's pipeline object: each call is
packed in C when it is made (:func:`broker.connection.pack_command`), and one deadline
covers the batch instead of one timer per reply. At a few thousand jobs a second, those
per-command costs were most of a worker's time in redis-py.

A batch is never sent twice: when its connection fails, every call in it fails with the
error, and each caller's own policy (docs/ARCHITECTURE.md, "Faults") decides whether to
send its call again. Only a call the server answered NOSCRIPT (it did not run) is sent
again, once, after the script is loaded.

Durable calls (creates, when ``JOBSTREAM_CREATE_REPLICAS`` asks for replicas: see
:meth:`ScriptBatcher.wait_for_replicas`) make their batch end with ``PUBLISH <marker> ""``
and ``WAIT <replicas> <timeout>`` on the same connection. WAIT confirms the replication
offset of the connection's last write; the marker's PUBLISH is that last write, so the
confirmation covers everything the primary took before it, including a job an earlier
request created on another connection (an idempotent replay, or a create re-sent after a
lost reply, which writes nothing itself). When fewer replicas confirm in time, the
durable calls of the batch fail with :class:`~broker.errors.NotReplicated`; the others
get their replies.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT

from broker.connection import pack_command
from broker.errors import NotReplicated
from broker.lua_source import Script
from broker.topology import RedisClient


@dataclass(slots=True)
class _Call:
    script: Script
    packed: bytes
    future: asyncio.Future[Any]
    args: tuple[EncodableT, ...] = ()  # the command, unpacked (Cluster: redis-py routes it)
    reloaded: bool = False
    durable: bool = False  # its batch waits for replicas (``wait_for_replicas``)


@dataclass(frozen=True, slots=True)
class _ReplicaWait:
    replicas: int
    timeout_ms: int
    packed: bytes  # PUBLISH <marker> "" then WAIT <replicas> <timeout_ms>


class ScriptBatcher:
    """``await batcher.call(script, keys, args)``: EVALSHA, pipelined with its neighbours."""

    def __init__(self, redis: RedisClient, max_batch: int = 512, max_in_flight: int = 2) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        self._replica_wait: _ReplicaWait | None = None

    def wait_for_replicas(self, replicas: int, timeout_ms: int, marker_channel: str) -> None:
        """Make a batch that holds a durable call wait until ``replicas`` replicas have
        everything the primary took (``WAIT``, at most ``timeout_ms``) before any durable call
        of it returns; 0 replicas: never wait. See the module's docstring."""
        if replicas <= 0:
            self._replica_wait = None
            return
        packed = pack_command(("PUBLISH", marker_channel, "")) + pack_command(("WAIT", replicas, timeout_ms))
        self._replica_wait = _ReplicaWait(replicas, timeout_ms, packed)

    async def call(
        self,
        script: Script,
        keys: tuple[EncodableT, ...],
        args: tuple[EncodableT, ...],
        *,
        durable: bool = False,
    ) -> Any:
        """Run ``script`` with ``keys`` and ``args`` and return its reply.

        Raises the script's error reply, or the connection's error if the batch failed;
        a ``durable`` call raises :class:`NotReplicated` when its batch's WAIT fell short.
        """
        packed = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Call(script, packed, future, durable=durable))
        return await future

    def _enqueue(self, call: _Call) -> None:
        self._pending.append(call)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._pending and not self._flush_scheduled and len(self._sending) < self.max_in_flight:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending or len(self._sending) >= self.max_in_flight:
            return
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sent)
        self._schedule_flush()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._schedule_flush()

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._exchange(batch)
        except BaseException as exc:  # the connection failed: every caller gets the error
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        unconfirmed = self._unconfirmed(replies[len(batch) :])
        for call, reply in zip(batch, replies[: len(batch)], strict=True):
            if call.future.done():
                continue  # the caller went away (cancelled); the command ran regardless
            if isinstance(reply, NoScriptError) and not call.reloaded:
                await self._reload_and_resend(call)
            elif isinstance(reply, Exception):
                call.future.set_exception(reply)
            elif call.durable and unconfirmed is not None:
                call.future.set_exception(unconfirmed)
            else:
                call.future.set_result(reply)

    def _waits(self, batch: list[_Call]) -> _ReplicaWait | None:
        """The WAIT this batch ends with, if it holds a durable call and replicas are asked."""
        wait = self._replica_wait
        return wait if wait is not None and any(call.durable for call in batch) else None

    def _unconfirmed(self, tail: list[Any]) -> Exception | None:
        """What the durable calls of a batch raise, from the replies of its PUBLISH and WAIT
        (none when the batch had no WAIT, or enough replicas confirmed)."""
        wait = self._replica_wait
        if not tail or wait is None:
            return None
        confirmed = tail[-1]
        if isinstance(confirmed, Exception):
            return confirmed
        if confirmed >= wait.replicas:
            return None
        return NotReplicated(wait.replicas, confirmed, wait.timeout_ms)

    async def _exchange(self, batch: list[_Call]) -> list[Any]:
        """Send the batch as one write and read its replies; a failed connection is dropped."""
        assert isinstance(self.redis, Redis)  # Cluster: ClusterScriptBatcher
        pool = self.redis.connection_pool
        packed, count, grace = b"".join(call.packed for call in batch), len(batch), 0.0
        wait = self._waits(batch)
        if wait is not None:  # PUBLISH and WAIT: two more replies, and WAIT's time on top
            packed, count, grace = packed + wait.packed, count + 2, wait.timeout_ms / 1000
        conn: Connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await _round_trip(conn, packed, count, grace)
        except BaseException:
            await conn.disconnect()  # its replies may be half read: never reuse it
            raise
        finally:
            await pool.release(conn)

    async def _reload_and_resend(self, call: _Call) -> None:
        """The server lost its script cache (restart, SCRIPT FLUSH): load the script, send again."""
        try:
            await self.redis.script_load(call.script.source)
        except Exception as exc:
            if not call.future.done():
                call.future.set_exception(exc)
            return
        call.reloaded = True
        self._enqueue(call)


class ClusterScriptBatcher(ScriptBatcher):
    """The batcher on Redis Cluster: a batch goes out as redis-py's cluster pipeline, which
    sends each call to the primary of its keys' slot (one write per node, the nodes in
    parallel) and follows MOVED/ASK while slots migrate. Every script touches one slot."""

    def __init__(self, redis: RedisCluster, max_batch: int = 512, max_in_flight: int = 2) -> None:
        super().__init__(redis, max_batch, max_in_flight)
        self.cluster = redis

    def wait_for_replicas(self, replicas: int, timeout_ms: int, marker_channel: str) -> None:
        """Not on Cluster (the settings refuse ``create_replicas`` there): 0 only."""
        if replicas > 0:
            raise ValueError("waiting for replicas is for one Redis or Sentinel, not Cluster")

    async def call(
        self,
        script: Script,
        keys: tuple[EncodableT, ...],
        args: tuple[EncodableT, ...],
        *,
        durable: bool = False,
    ) -> Any:
        """As :meth:`ScriptBatcher.call`, routed by the first key (``durable`` changes nothing here)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Call(script, b"", future, command))
        return await future

    async def _exchange(self, batch: list[_Call]) -> list[Any]:
        pipe = self.cluster.pipeline(transaction=False)
        for call in batch:
            pipe.execute_command(*call.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


def batcher_for(redis: RedisClient) -> ScriptBatcher:
    """The batcher for ``redis``'s topology."""
    if isinstance(redis, RedisCluster):
        return ClusterScriptBatcher(redis)
    return ScriptBatcher(redis)


async def _round_trip(conn: Connection, packed: bytes, count: int, grace: float = 0.0) -> list[Any]:
    """Send ``packed`` and read ``count`` replies within the socket timeout plus ``grace`` s."""
    await conn.send_packed_command(packed, check_health=False)
    replies: list[Any] = []
    deadline = None if conn.socket_timeout is None else conn.socket_timeout + grace
    async with asyncio.timeout(deadline):
        for _ in range(count):
            try:
                # No timeout per reply (the block's deadline covers them); an error reply is
                # that command's result, and leaves the connection in step.
                replies.append(await conn.read_response(timeout=math.inf))
            except ResponseError as err:
                replies.append(err)
    return replies
