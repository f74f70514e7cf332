"""Redis connections: one that packs commands in C (hiredis), and the fault policy of the
long-lived roles (workers, scheduler): pools that reconnect and retry through a blip, and
one warning per outage instead of a traceback per try.

``HiredisConnection``: a redis-py asyncio connection that packs commands in C, as the sync
client does.

redis-py's asyncio ``Connection.pack_command`` is pure Python, about a microsecond per
argument; the create script alone has 22 arguments, so packing was a tenth of a
``POST /jobs`` (py-spy, under wrk). redis-py's sync client packs with
``hiredis.pack_command`` when hiredis is installed; this does the same, with the same
argument rules (str/bytes/int/float; anything else is a ``DataError``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import hiredis
from redis.asyncio import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import DataError, RedisError
from redis.typing import EncodableT

_hiredis_pack = cast("Callable[[tuple[Any, ...]], bytes]", hiredis.pack_command)  # its stub says a 1-tuple


def pack_command(args: tuple[EncodableT, ...]) -> bytes:
    """The RESP bytes of one command, packed in C: the one packer of every jobstream write.

    Takes what redis-py takes (str/bytes/int/float, and bytes views); anything else is a
    ``DataError``, as in redis-py. The script batcher and :class:`HiredisConnection` use it.
    """
    try:
        return _hiredis_pack(args)
    except TypeError:
        pass
    try:  # hiredis takes bytes but not their views
        return _hiredis_pack(tuple(_plain(arg) for arg in args))
    except TypeError as err:
        raise DataError(str(err)) from None


class HiredisPacking:
    """Packs commands with :func:`pack_command`: mixed into a redis-py asyncio connection class."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        """The RESP bytes of one command (a multi-word command name is split, as redis-py does)."""
        name: Any = args[0]
        if isinstance(name, str):
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        return [pack_command(args)]


class HiredisConnection(HiredisPacking, Connection):
    """``redis.asyncio.Connection`` with :func:`pack_command` (pass as ``connection_class``)."""


class HiredisSentinelConnection(HiredisPacking, SentinelManagedConnection):
    """Sentinel's connection (it asks the sentinels where the primary is), packing in C."""


def _plain(arg: EncodableT) -> EncodableT:
    return bytes(arg) if isinstance(arg, (bytearray, memoryview)) else arg


REDIS_FAULTS: tuple[type[Exception], ...] = (RedisError, OSError, RuntimeError)
"""What a Redis call raises when Redis, not the caller, failed: retried or waited out.

``RuntimeError``: under uvloop a write on a transport the peer already closed raises
``RuntimeError("unable to perform operation on <TCPTransport closed=True ...>")``, which
redis-py does not turn into a ``ConnectionError`` (seen when a Redis Cluster node restarts,
in the connection's handshake). The loops that catch these make only Redis calls, so
waiting one out is right there (:func:`closed_transport` tells it apart where that matters)."""


def closed_transport(err: BaseException) -> bool:
    """Whether ``err`` is uvloop's "write on a closed transport" (see :data:`REDIS_FAULTS`)."""
    return isinstance(err, RuntimeError) and "unable to perform operation on" in str(err)

_RETRIES = 6
_BACKOFF_BASE_SECONDS = 0.05
_BACKOFF_CAP_SECONDS = 0.5
_HEALTH_CHECK_SECONDS = 10


def resilient_options() -> dict[str, Any]:
    """Connection options for a worker's or the scheduler's pool: ride out a Redis blip.

    Each command is retried on a connection error or timeout (a killed connection, a
    restart, ``LOADING`` while Redis replays its AOF) after 0.05, 0.1, 0.2, 0.4, 0.5 and
    0.5 s on a fresh connection, so a blip of about a second and a half never reaches
    the caller; a connection idle for ``_HEALTH_CHECK_SECONDS`` is PINGed before use.
    Only scripts that are idempotent on a resend use these pools for state changes
    (start, finish, retry; see their headers). Longer outages are the caller's to wait
    out: see :class:`RedisWatch`.
    """
    return {
        "retry": Retry(ExponentialBackoff(cap=_BACKOFF_CAP_SECONDS, base=_BACKOFF_BASE_SECONDS), _RETRIES),
        "health_check_interval": _HEALTH_CHECK_SECONDS,
        "socket_keepalive": True,
    }


class RedisWatch:
    """Tells the log once that Redis stopped answering a process, and once that it is back.

    Every loop of the process reports here: ``failed`` when a call raised one of
    :data:`REDIS_FAULTS`, ``answered`` when one went through. A failure of a call that
    began before Redis was last seen back says nothing new, and is not logged again.
    """

    def __init__(self, logger: logging.Logger, role: str) -> None:
        self.logger = logger
        self.role = role
        self.down_since: float | None = None
        self.back_at = 0.0

    @property
    def down(self) -> bool:
        """Whether the last word from Redis was a failure."""
        return self.down_since is not None

    def failed(self, where: str, err: BaseException, began: float | None = None) -> None:
        """A call (started at ``began``, monotonic) failed because of Redis."""
        if self.down_since is not None or (began is not None and began < self.back_at):
            return
        self.down_since = time.monotonic()
        self.logger.warning(
            "%s: Redis is unreachable (%s: %s); retrying until it is back", self.role, where, err
        )

    def answered(self) -> None:
        """A call went through: if Redis was down, it is back."""
        if self.down_since is None:
            return
        self.back_at = time.monotonic()
        self.logger.warning("%s: Redis is back after %.1f s", self.role, self.back_at - self.down_since)
        self.down_since = None


T = TypeVar("T")


async def until_redis_answers(
    watch: RedisWatch,
    where: str,
    call: Callable[[], Awaitable[T]],
    deadline: Callable[[], float],
    faults: tuple[type[Exception], ...] = REDIS_FAULTS,
) -> T:
    """Await ``call()`` until Redis lets it through, trying again with backoff.

    Gives up, raising the last error, when the next try would start past ``deadline()``
    (monotonic; asked after each failure, so it may move). Used where waiting is the
    right answer to an outage: a role's start-up, a worker's writes of job states, a
    schedule's firing. ``faults`` are the errors that mean "not yet".
    """
    failures = 0
    while True:
        began = time.monotonic()
        try:
            result = await call()
        except faults as err:
            watch.failed(where, err, began)
            failures += 1
            pause = backoff(failures)
            if time.monotonic() + pause >= deadline():
                raise
            await asyncio.sleep(pause)
            continue
        watch.answered()
        return result


STARTUP_PATIENCE_SECONDS = 60.0
"""How long a role's start-up waits for Redis before it gives up (and its supervisor restarts it)."""


def backoff(failures: int, cap: float = 1.0) -> float:
    """Seconds to wait before a loop's next try after ``failures`` failures in a row."""
    return min(cap, 0.05 * 2.0 ** min(failures, 16))
