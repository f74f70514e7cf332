"""The Lua scripts, each registered once per client and called by EVALSHA."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

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
)


@cache
def script_source(name: str) -> str:
    """A script's full text: the shared fragment ``_lib.lua`` followed by the script."""
    folder = resources.files("broker") / "lua"
    lib = (folder / "_lib.lua").read_text()
    return lib + "\n" + (folder / f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class Scripts:
    """One registered script per state change; calling one sends EVALSHA (loading on NOSCRIPT)."""

    create_job: AsyncScript
    start_job: AsyncScript
    progress_job: AsyncScript
    finish_job: AsyncScript
    retry_job: AsyncScript
    cancel_job: AsyncScript
    dead_letter_job: AsyncScript
    reclaim: AsyncScript
    renew_leases: AsyncScript
    promote_due: AsyncScript
    claim_tick: AsyncScript
    reap_job: AsyncScript
    drop_idempotency: AsyncScript
    expire_heartbeat: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> Scripts:
        """Register every script with ``redis`` (no round trip until first use)."""
        made = {name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES}
        return cls(**made)

    async def load_all(self, redis: Redis) -> None:
        """SCRIPT LOAD every script up front, so the first EVALSHA of each never misses."""
        for name in SCRIPT_NAMES:
            script: AsyncScript = getattr(self, name)
            await redis.script_load(script.script)
