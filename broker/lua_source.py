"""The Lua scripts as sent to Redis: their text, their SHA1, and loading them up front.

Scripts are called by EVALSHA through :class:`broker.batching.ScriptBatcher` (which loads a
script the server lost and sends the call again); the typed method that builds each call
is in :mod:`broker.scripts`. See docs/ARCHITECTURE.md, "Scripts".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from broker.topology import RedisClient

SCRIPT_NAMES = (
    "create_job",
    "start_job",
    "progress_job",
    "finish_job",
    "retry_job",
    "cancel_job",
    "dead_letter_job",
    "reclaim",
    "renew_leases",
    "promote_due",
    "claim_tick",
    "reap_job",
    "drop_idempotency",
    "expire_heartbeat",
    "mark_fetched",
    "claim_webhooks",
    "webhook_outcome",
)


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its name, its full text and the SHA1 that EVALSHA names it by."""

    name: str
    source: str
    sha: str

    @classmethod
    def of(cls, name: str, source: str) -> Script:
        """The script with this text, named by its SHA1 as EVALSHA names it."""
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())  # noqa: S324 - Redis's choice


@cache
def script_source(name: str) -> str:
    """A script's full text: the shared fragment ``_lib.lua`` followed by the script."""
    folder = resources.files("broker") / "lua"
    lib = (folder / "_lib.lua").read_text()
    return lib + "\n" + (folder / f"{name}.lua").read_text()


@cache
def script(name: str) -> Script:
    """The script called ``name`` (one of :data:`SCRIPT_NAMES`)."""
    return Script.of(name, script_source(name))


async def load_all(redis: RedisClient) -> None:
    """SCRIPT LOAD every script up front, so the first EVALSHA of each never misses."""
    for name in SCRIPT_NAMES:
        await redis.script_load(script(name).source)
