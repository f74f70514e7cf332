"""Sends script calls to Redis as pipelines, without waiting for a batch to fill.

A worker running many jobs at once issues their start and finish scripts at nearly the
same moment; a web process does the same with concurrent creates. The batcher keeps at
most ``max_in_flight`` pipelines outstanding: a call made while the line is free goes out
at the end of the current loop turn (with whatever else that turn produced), and calls
made while pipelines are outstanding wait for one to come back and then all go together.
An idle system pays no added latency; a busy one sends fewer, larger pipelines, saving a
round trip and most of redis-py's per-command work for every call after the first.

A batch goes out as a pipeline would, without redis-py's pipeline object: hiredis packs
the commands in C, and one deadline covers the batch instead of one timer per reply. At a
few thousand jobs a second, those per-command costs were most of a worker's time in redis-py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """``await batcher.call(script, keys, args)``: EVALSHA, pipelined with its neighbours."""

    def __init__(self, redis: Redis, max_batch: int = 512, max_in_flight: int = 2) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._pending: list[Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script`` with ``keys`` and ``args`` and return its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        self._schedule_flush()
        return await future

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

    async def _send(self, batch: list[Call]) -> None:
        try:
            replies = await self._exchange(batch)
        except BaseException as exc:  # the connection failed: every caller gets the error
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (script, keys, args, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # the caller went away (cancelled); the command ran regardless
            if isinstance(reply, NoScriptError):
                await self._retry_loaded(script, keys, args, future)
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _exchange(self, batch: list[Call]) -> list[Any]:
        """Send the batch as one write and read its replies, retried as redis-py retries a pipeline.

        What a redis-py pipeline does for a batch of EVALSHAs, minus its per-command Python
        work: hiredis packs the commands, and one deadline covers all the replies.
        """
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in batch]
        packed = b"".join(map(pack_command, commands))
        pool = self.redis.connection_pool
        conn: Connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await conn.retry.call_with_retry(
                lambda: _round_trip(conn, packed, len(batch)), lambda _: conn.disconnect()
            )
        finally:
            await pool.release(conn)

    async def _retry_loaded(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], future: asyncio.Future[Any]
    ) -> None:
        """The server lost its script cache (restart, SCRIPT FLUSH): load and run directly."""
        try:
            future.set_result(await script(keys=list(keys), args=list(args), client=self.redis))
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)


async def _round_trip(conn: Connection, packed: bytes, count: int) -> list[Any]:
    await conn.send_packed_command(packed, check_health=False)
    replies: list[Any] = []
    async with asyncio.timeout(conn.socket_timeout):
        for _ in range(count):
            try:
                # No timeout per reply (the block's deadline covers them); an error reply is
                # that command's result, and leaves the connection in step.
                replies.append(await conn.read_response(timeout=math.inf))
            except ResponseError as err:
                replies.append(err)
    return replies
