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
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT

from broker.connection import pack_command
from broker.errors import NotReplicated
from broker.lua_source import Script
from broker.topology import CLIENT_BREAKAGE, RedisClient

_NOT_RUN = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError)
"""Why a call on Cluster did not run: a node redirected it or was not ready, or the slot map
had no node for its slot."""


@dataclass(slots=True)
class _Call:
    script: Script
    packed: bytes
    future: asyncio.Future[Any]
    key: EncodableT | None = None  # its first key (on Cluster, its slot's node serves it)
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
        self._enqueue(_Call(script, packed, future, keys[0] if keys else None, durable=durable))
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
    """The batcher on Redis Cluster. Every script touches one slot, named by its first key:
    a batch is split by the primary that serves each call's slot, and each part goes to its
    node as one packed write on one of that node's connections, the nodes in parallel, as
    the single-Redis batcher does (redis-py's cluster pipeline packed, routed and parsed each
    command in Python, and wrote each node's part in many pieces). A call the node redirects
    (MOVED, ASK) did not run: it goes once to the node the answer names (after ASKING, for
    ASK), and the slot map is refreshed. A call that could not run (TRYAGAIN, CLUSTERDOWN, a
    slot with no known node, a second redirect) fails as a connection error, which its
    caller's policy may retry. A node that fails fails the calls sent to it. Nothing is ever
    sent twice (redis-py's own routing retries a command after a connection error, so a
    call it re-sent once ran twice in a test), and a failure starts a refresh of the map."""

    def __init__(self, redis: RedisCluster, max_batch: int = 512, max_in_flight: int = 2) -> None:
        super().__init__(redis, max_batch, max_in_flight)
        self.cluster = redis
        self._refreshing: asyncio.Task[None] | None = None

    def wait_for_replicas(self, replicas: int, timeout_ms: int, marker_channel: str) -> None:
        """Not on Cluster (the settings refuse ``create_replicas`` there): 0 only."""
        if replicas > 0:
            raise ValueError("waiting for replicas is for one Redis or Sentinel, not Cluster")

    async def _exchange(self, batch: list[_Call]) -> list[Any]:
        parts: dict[str, tuple[ClusterNode, list[int]]] = {}
        replies: list[Any] = [None] * len(batch)
        for index, call in enumerate(batch):
            if call.key is None:
                replies[index] = ValueError(f"script {call.script.name} has no key to route it by")
                continue
            try:
                node = self.cluster.get_node_from_key(call.key)  # type: ignore[arg-type]
            except SlotNotCoveredError as err:  # no map of the slot yet: fails as not run
                replies[index] = err
                continue
            assert node is not None  # a primary always (None answers a replica asked for)
            parts.setdefault(node.name, (node, []))[1].append(index)
        outcomes = await asyncio.gather(
            *(
                self._node_exchange(node, b"".join(batch[i].packed for i in indexes), len(indexes))
                for node, indexes in parts.values()
            ),
            return_exceptions=True,
        )
        for (_node, indexes), outcome in zip(parts.values(), outcomes, strict=True):
            if not isinstance(outcome, Exception) and isinstance(outcome, BaseException):
                raise outcome  # cancelled
            if isinstance(outcome, Exception):
                self._refresh_slots(batch[indexes[0]])
            for position, index in enumerate(indexes):
                replies[index] = outcome if isinstance(outcome, Exception) else outcome[position]
        redirected = [index for index, reply in enumerate(replies) if isinstance(reply, _NOT_RUN)]
        outcomes = await asyncio.gather(*(self._redirected(batch[i], replies[i]) for i in redirected))
        for index, reply in zip(redirected, outcomes, strict=True):
            replies[index] = reply
        return replies

    async def _redirected(self, call: _Call, answer: Exception) -> Any:
        """The reply (or error) of ``call``, which did not run where it was sent, sent once more
        to the node a MOVED or ASK names; anything else fails as a connection error."""
        self._refresh_slots(call)
        node = None
        if isinstance(answer, AskError):  # MOVED is an AskError too
            node = self.cluster.get_node(host=answer.host, port=answer.port)
        if node is None:
            return RedisConnectionError(f"the cluster could not take the call yet ({answer!r})")
        asking = not isinstance(answer, MovedError)
        packed = (pack_command(("ASKING",)) if asking else b"") + call.packed
        try:
            reply = (await self._node_exchange(node, packed, 2 if asking else 1))[-1]
        except Exception as err:  # the call's own outcome, as in a batch
            return err
        if isinstance(reply, _NOT_RUN):
            return RedisConnectionError(f"the cluster redirected the call again ({reply!r})")
        return reply

    @staticmethod
    async def _node_exchange(node: ClusterNode, packed: bytes, count: int) -> list[Any]:
        """One write of ``packed`` (``count`` commands) to ``node`` and their replies; a failed
        connection is dropped."""
        conn = node.acquire_connection()
        try:
            return await _round_trip(conn, packed, count)
        except BaseException as err:
            await conn.disconnect()  # its replies may be half read: never reuse it
            if isinstance(err, CLIENT_BREAKAGE):
                raise RedisConnectionError(f"a cluster connection broke: {err!r}") from err
            raise
        finally:
            node.release(conn)

    def _refresh_slots(self, call: _Call) -> None:
        """Have redis-py find the current primary of ``call``'s slot (one refresh at a time)."""
        if self._refreshing is not None and not self._refreshing.done():
            return

        async def refresh() -> None:
            with suppress(RedisError, OSError, *CLIENT_BREAKAGE):
                await self.cluster.exists(call.key)  # type: ignore[arg-type]

        self._refreshing = asyncio.ensure_future(refresh())


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
