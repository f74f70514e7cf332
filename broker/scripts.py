"""``Scripts``: one typed method per Lua script, the only code that builds KEYS and ARGV.

Each method takes named parameters, builds the script's KEYS (through :class:`Keys`) and
ARGV (required values in the order the script's header lists them; optional ones packed
into one MessagePack ``opts`` map, the last ARGV, so adding an option shifts nothing) and
turns the reply into a typed value. Every call goes through the one :class:`ScriptBatcher`:
calls made together (``asyncio.gather``) share a pipeline, a call made alone goes out at the
end of the loop turn. A failed connection fails the call; its caller's policy decides
whether to make it again (docs/ARCHITECTURE.md, "Faults")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
from redis.typing import EncodableT

from broker.batching import ScriptBatcher, batcher_for
from broker.errors import ScriptCode
from broker.keys import Keys, partition_of
from broker.lua_source import load_all, script
from broker.models import pairs_to_fields
from broker.topology import RedisClient

_pack_opts = msgspec.msgpack.Encoder().encode


class Reply(NamedTuple):
    """What a job script answers: its code, and the record or the detail that comes with it.

    ``record``: the job's fields after the change (create, start, cancel); ``detail``: the
    job's status on ``BAD_TRANSITION``/``SKIPPED``, or the existing job id on ``DUPLICATE``.
    """

    code: ScriptCode
    record: dict[bytes, bytes] | None = None
    detail: str | None = None


class StartReply(NamedTuple):
    """``start_job``'s :class:`Reply`, and the ms the job waited since due (None: a re-sent start)."""

    reply: Reply
    waited_ms: int | None


class Progressed(NamedTuple):
    """``progress_job``'s answer: its code, whether a cancel was asked, and the detail."""

    code: ScriptCode
    cancel_requested: bool = False
    detail: str | None = None


class Reclaimed(NamedTuple):
    """A stream entry taken over from a consumer whose lease ran out."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int


class Promoted(NamedTuple):
    """How many delayed messages went to the stream, and ms until the next is due (None: none)."""

    moved: int
    next_due_ms: int | None


class WebhookClaim(NamedTuple):
    """Webhooks a sender claimed, the end of their lease (the claim's token), and ms until the
    next due one (None: none)."""

    lease_end_ms: int
    job_ids: list[str]
    next_due_ms: int | None


class TickClaim(NamedTuple):
    """Whether this replica won the current slot, the slot's start and ms to the next slot."""

    won: bool
    slot_ms: int
    next_in_ms: int


class RecordExtras(msgspec.Struct, frozen=True, kw_only=True):
    """What a create may store on the record beyond the basics (None/False: not stored).

    ``timeout`` is seconds as text and ``labels`` JSON object text, as the record keeps them.
    """

    timeout: str | None = None
    labels: str | None = None
    created_by: str | None = None
    keep_until_fetched: bool = False
    callback_url: str | None = None


class CreateOpts(msgspec.Struct, omit_defaults=True):
    """``create_job``'s optional arguments (absent: the script's default)."""

    max_active: int = 0
    idempotency_ttl: int = 0
    run_at: int = 0
    delay_ms: int = 0
    replace_idempotency: bool = False
    timeout: str | None = None
    labels: str | None = None
    created_by: str | None = None
    keep_until_fetched: bool = False
    callback_url: str | None = None


class ProgressOpts(msgspec.Struct, omit_defaults=True):
    """``progress_job``'s optional arguments: the step's message (kept when absent), the ETA."""

    message: str | None = None
    eta: float | None = None


class CancelOpts(msgspec.Struct, omit_defaults=True):
    """``cancel_job``'s optional arguments: the caller, who must own the job (absent: an admin),
    and how long a completion webhook is tried (as :class:`TerminalOpts`)."""

    owner: str | None = None
    webhook_window: int = 0


class TerminalOpts(msgspec.Struct):
    """The optional argument of the scripts that end a job (finish, dead-letter, reap): how
    many seconds its completion webhook, if it has a ``callback_url``, is tried from now."""

    webhook_window: int


def _reply(raw: list[Any]) -> Reply:
    """Read ``{code}``, ``{code, flat record}`` or ``{code, status or id}``."""
    code = ScriptCode(int(raw[0]))
    if len(raw) < 2:
        return Reply(code)
    if isinstance(raw[1], list):
        return Reply(code, pairs_to_fields(raw[1]))
    detail = raw[1]
    return Reply(code, None, detail.decode() if isinstance(detail, bytes) else str(detail))


@dataclass(frozen=True, slots=True)
class Scripts:
    """The scripts of one Redis client and key prefix, one typed method each."""

    redis: RedisClient
    keys: Keys
    batcher: ScriptBatcher

    @classmethod
    def register(cls, redis: RedisClient, keys: Keys) -> Scripts:
        """The scripts over ``redis`` (no round trip until the first call)."""
        return cls(redis, keys, batcher_for(redis))

    async def load_all(self, redis: RedisClient | None = None) -> None:
        """SCRIPT LOAD every script (through ``redis``, else this client) so no first EVALSHA misses."""
        await load_all(redis or self.redis)

    async def _call(
        self, name: str, keys: tuple[EncodableT, ...], args: tuple[EncodableT, ...], durable: bool = False
    ) -> Any:
        return await self.batcher.call(script(name), keys, args, durable=durable)

    # -- job state changes (see each script's header) ---------------------------------

    async def create_job(
        self,
        *,
        job_id: str,
        task: str,
        owner: str,
        queue: str,
        input_json: bytes,
        message: bytes,
        active_ttl: int,
        idempotency_key: str | None,
        opts: CreateOpts,
    ) -> Reply:
        """A new PENDING job: OK with its record, DUPLICATE with the existing id, or QUOTA
        (durable: ``NotReplicated`` when replicas are asked and do not confirm)."""
        k, p = self.keys, partition_of(job_id)
        idem = k.idempotency(owner, idempotency_key, p) if idempotency_key else k.tag(p)
        keys: tuple[str, ...] = (k.job(job_id), k.owner_jobs(owner, p), k.owner_active(owner, p), idem)
        keys += (k.queue(queue, p), k.delayed(queue, p), k.all_jobs(p), k.counts(p))
        args = (k.events(p), job_id, task, owner, queue, input_json, active_ttl, message)
        return _reply(await self._call("create_job", keys, (*args, _pack_opts(opts)), durable=True))

    async def start_job(
        self,
        *,
        job_id: str,
        stream: str,
        group: str,
        consumer: str,
        entry_id: str,
        dispatch: int,
        active_ttl: int,
        run_token: str,
    ) -> StartReply:
        """PENDING -> PROCESSING: OK with the record, or STALE, NOT_FOUND, SKIPPED (status)."""
        k = self.keys
        args = (k.events(partition_of(job_id)), group, consumer, entry_id, dispatch, active_ttl, run_token)
        raw = await self._call("start_job", (k.job(job_id), stream), args)
        return StartReply(_reply(raw), int(raw[2]) if len(raw) > 2 else None)

    async def progress_job(
        self, *, job_id: str, attempt: int, progress: float, active_ttl: int, opts: ProgressOpts
    ) -> Progressed:
        """The running attempt's progress: OK (and whether a cancel was asked), or a refusal."""
        k = self.keys
        args = (k.events(partition_of(job_id)), attempt, repr(float(progress)), active_ttl, _pack_opts(opts))
        raw = await self._call("progress_job", (k.job(job_id),), args)
        code = ScriptCode(int(raw[0]))
        if code == ScriptCode.OK:
            return Progressed(code, bool(raw[1]))
        return Progressed(code, False, raw[1].decode() if len(raw) > 1 else None)

    async def finish_job(
        self,
        *,
        job_id: str,
        owner: str,
        stream: str,
        group: str,
        entry_id: str,
        attempt: int,
        status: str,
        payload: bytes,
        retention: int,
        opts: TerminalOpts,
    ) -> Reply:
        """PROCESSING -> ``status`` with ``payload`` (result or error JSON), acking the entry."""
        k, p = self.keys, partition_of(job_id)
        keys = (k.job(job_id), k.owner_active(owner, p), stream, k.webhook(job_id), k.webhooks_due(p))
        args = (k.events(p), attempt, status, payload, retention, group, entry_id, job_id)
        return _reply(await self._call("finish_job", keys, (*args, _pack_opts(opts))))

    async def retry_job(
        self,
        *,
        job_id: str,
        queue: str,
        stream: str,
        group: str,
        entry_id: str,
        attempt: int,
        error_json: bytes,
        delay_ms: int,
        message: bytes,
        dispatch: int,
        active_ttl: int,
    ) -> Reply:
        """PROCESSING -> PENDING, the next dispatch due ``delay_ms`` after Redis TIME."""
        k, p = self.keys, partition_of(job_id)
        keys = (k.job(job_id), stream, k.delayed(queue, p))
        args = (k.events(p), attempt, error_json, delay_ms, message, dispatch, active_ttl)
        return _reply(await self._call("retry_job", keys, (*args, group, entry_id)))

    async def cancel_job(
        self,
        *,
        job_id: str,
        owner: str,
        queue: str,
        queued_message: bytes,
        error_json: bytes,
        retention: int,
        opts: CancelOpts,
    ) -> Reply:
        """Cancel: OK with the record, NOT_FOUND (or not the caller's), BAD_TRANSITION (status)."""
        k, p = self.keys, partition_of(job_id)
        job, webhook = k.job(job_id), k.webhook(job_id)
        keys = (job, k.owner_active(owner, p), k.delayed(queue, p), webhook, k.webhooks_due(p))
        args = (k.events(p), retention, k.cancels(p), job_id, error_json, queued_message)
        return _reply(await self._call("cancel_job", keys, (*args, _pack_opts(opts))))

    async def dead_letter_job(
        self,
        *,
        job_id: str,
        owner: str,
        queue: str,
        stream: str,
        group: str,
        consumer: str,
        entry_id: str,
        message: bytes,
        error_json: bytes,
        retention: int,
        deliveries: int,
        opts: TerminalOpts,
    ) -> Reply:
        """Move an over-delivered entry to the dead stream: OK (job failed), SKIPPED or STALE."""
        k, p = self.keys, partition_of(job_id)
        job, webhook = k.job(job_id), k.webhook(job_id)
        keys = (job, k.owner_active(owner, p), stream, k.dead(queue, p), webhook, k.webhooks_due(p))
        args = (k.events(p), group, consumer, entry_id, message, error_json, retention)
        return _reply(
            await self._call("dead_letter_job", keys, (*args, job_id, deliveries, _pack_opts(opts)))
        )

    async def reap_job(
        self,
        *,
        job_id: str,
        owner: str,
        queue: str,
        version_seen: bytes,
        min_idle_ms: int,
        active_ttl: int,
        retention: int,
        error_json: bytes,
        pending_action: str,
        message: bytes,
        dispatch: int,
        opts: TerminalOpts,
    ) -> Reply:
        """The reaper's verdict: OK (new status), NOT_FOUND, STALE or SKIPPED (status)."""
        k, p = self.keys, partition_of(job_id)
        keys = (
            k.job(job_id),
            k.owner_active(owner, p),
            k.queue(queue, p),
            k.delayed(queue, p),
            k.webhook(job_id),
            k.webhooks_due(p),
        )
        args = (k.events(p), job_id, version_seen, min_idle_ms, active_ttl, retention)
        rest = (error_json, pending_action, message, dispatch, _pack_opts(opts))
        return _reply(await self._call("reap_job", keys, (*args, *rest)))

    # -- completion webhooks ---------------------------------------------------------------

    async def claim_webhooks(self, *, partition: int, lease_ms: int, limit: int) -> WebhookClaim:
        """Lease up to ``limit`` of the partition's due webhooks to this sender for ``lease_ms``."""
        due = (self.keys.webhooks_due(partition),)
        lease_end, ids, wait = await self._call("claim_webhooks", due, (lease_ms, limit))
        return WebhookClaim(int(lease_end), [i.decode() for i in ids], None if int(wait) < 0 else int(wait))

    async def webhook_outcome(
        self, *, job_id: str, lease_end_ms: int, outcome: str, error: str = "", delay_ms: int = 0
    ) -> Reply:
        """Record a delivery attempt: OK (the webhook's state), NOT_FOUND (no webhook) or STALE."""
        k, p = self.keys, partition_of(job_id)
        keys = (k.job(job_id), k.webhook(job_id), k.webhooks_due(p))
        args = (k.events(p), job_id, lease_end_ms, outcome, error, delay_ms)
        return _reply(await self._call("webhook_outcome", keys, args))

    async def mark_fetched(self, *, job_id: str, grace_seconds: int) -> int | None:
        """The first fetch of a finished keep-until-fetched job: its new ``expires_at`` (ms), or
        None when there was nothing to do (not such a job, not ended, fetched before)."""
        raw = await self._call("mark_fetched", (self.keys.job(job_id),), (grace_seconds,))
        return int(raw[1]) if int(raw[0]) == ScriptCode.OK else None

    # -- queues, leases and maintenance --------------------------------------------------

    async def reclaim(
        self, *, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Reclaimed]:
        """Take over up to ``count`` entries idle for ``min_idle_ms``, with their delivery counts."""
        raw = await self._call("reclaim", (stream,), (group, consumer, min_idle_ms, count))
        return [Reclaimed(entry.decode(), pairs_to_fields(flat), int(n)) for entry, flat, n in raw]

    async def renew_leases(
        self, *, stream: str, group: str, consumer: str, idle_ms: int, entry_ids: Iterable[str]
    ) -> list[str]:
        """Set the idle time of the entries ``consumer`` holds; returns those it no longer holds."""
        raw = await self._call("renew_leases", (stream,), (group, consumer, idle_ms, *entry_ids))
        return [entry.decode() for entry in raw]

    async def promote_due(self, *, queue: str, partition: int, limit: int) -> Promoted:
        """Move up to ``limit`` due messages from the queue's delayed set to its stream."""
        keys = (self.keys.delayed(queue, partition), self.keys.queue(queue, partition))
        moved, next_ms = await self._call("promote_due", keys, (limit,))
        return Promoted(int(moved), None if int(next_ms) < 0 else int(next_ms))

    async def claim_tick(self, *, name: str, period_ms: int, claimant: str, keep_ms: int) -> TickClaim:
        """Claim the current slot of periodic run ``name`` for ``claimant`` (on Redis time)."""
        code, slot, wait = await self._call(
            "claim_tick", (self.keys.lock(name),), (period_ms, claimant, keep_ms)
        )
        return TickClaim(int(code) == ScriptCode.OK, int(slot), int(wait))

    async def drop_idempotency(self, *, key: bytes | str, job_id: bytes | str) -> bool:
        """Delete idempotency key ``key`` if it still names the (gone) job; True if deleted."""
        (code,) = await self._call("drop_idempotency", (key,), (job_id,))
        return int(code) == ScriptCode.OK

    async def expire_heartbeat(self, *, key: bytes | str, max_age_ms: int) -> bool:
        """Drop, or give a TTL to, a heartbeat hash with none; True if it had none (and was fixed)."""
        code, *_ = await self._call("expire_heartbeat", (key,), (max_age_ms,))
        return int(code) == ScriptCode.OK
