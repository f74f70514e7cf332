"""One typed settings object, read from ``JOBSTREAM_*`` environment variables in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import msgspec

from broker.keys import Keys
from broker.topology import InvalidRedisUrl, Topology, parse_redis_url
from broker.webhook_signing import decode_secret
from broker.webhook_targets import parse_allowed_hosts

AuthMode = Literal["jwt", "none"]
JwtAlgorithm = Literal["HS256", "HS384", "HS512"]
"""HMAC only: stream tokens are signed with the same shared secret as the bearer tokens."""
ReapPending = Literal["resend", "fail"]

_ENV_PREFIX = "JOBSTREAM_"
MAX_PARTITIONS = 1024
DEFAULT_CLUSTER_PARTITIONS = 16
"""Partitions on Cluster when not set: enough to spread over a few primaries."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a jobstream process can be configured with.

    Each field maps to ``JOBSTREAM_<FIELD_NAME_UPPERCASE>``; values are converted and
    validated by msgspec, so a typo in a number fails at start-up, not mid-request.
    """

    # One Redis (redis://), Sentinel (redis+sentinel://h:p,h:p/<primary>) or Cluster
    # (redis+cluster://h:p,h:p): see broker.topology.
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "js:"
    # Queues, owner indexes and events are split into this many partitions, each in one
    # Cluster slot (0: 1 on one Redis or Sentinel, DEFAULT_CLUSTER_PARTITIONS on Cluster).
    # Every process must use the same number; it may be raised, never lowered while jobs remain.
    partitions: int = 0
    # POST /jobs answers 202 only once this many replicas have the job (Redis WAIT), else
    # 503 after create_replicas_timeout_ms: a failover then cannot lose an acknowledged job.
    create_replicas: int = 0
    create_replicas_timeout_ms: int = 1_000
    # Auth: "jwt" needs jwt_secret; "none" serves one local user and is for trusted
    # networks and ``jobstream dev`` only.
    auth: AuthMode = "jwt"
    jwt_secret: str | None = None
    jwt_algorithm: JwtAlgorithm = "HS256"
    local_user: str = "local"
    admin_role: str = "admin"
    # Operator access (web, JWT mode): a credential (``Authorization: Bearer <it>``, 32+
    # bytes) that reads /metrics and /events/stats only, so Prometheus can scrape without a
    # user JWT; unset, those routes need an admin JWT.
    metrics_token: str | None = None
    # Identity providers (web): verify bearer JWTs against a JWKS URL (RS256/ES256 keys an
    # identity provider publishes) with these issuer and audience checks, instead of the
    # shared secret. Stream tokens are then signed with stream_token_secret (32+ bytes; a
    # JWKS verifier holds no signing key); unset, with the JWT secret, else a per-process key.
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    stream_token_secret: str | None = None
    # Where a bearer JWT keeps the caller's roles: a top-level claim, or a dotted path into
    # nested objects (Keycloak: "realm_access.roles"; Cognito: "cognito:groups").
    jwt_roles_claim: str = "roles"
    # A caller with this role may create jobs for another owner ("owner" in POST /jobs) and
    # read or cancel any owner's jobs; the job records it as created_by.
    service_role: str = "service"
    # Browsers on other origins (comma-separated, e.g. "https://app.example.com"); empty: no CORS.
    cors_origins: str = ""
    # Job lifetimes. Retention: how long a finished job is kept (a task's own ``retention``
    # overrides it); 0: not kept, deleted as soon as its final state is published.
    active_ttl_seconds: int = 86_400
    retention_seconds: int = 7 * 86_400
    max_body_bytes: int = 1_048_576
    max_active_per_owner: int = 10_000
    # A task's keep_until_fetched results: how long the record stays once its result was read.
    fetched_grace_seconds: int = 60
    # Failures: owners see their failed jobs' tracebacks (admins always do). On in ``jobstream dev``.
    expose_tracebacks: bool = False
    default_queue: str = "default"
    # Comma-separated modules whose import registers the tasks (web and workers both load them).
    task_modules: str = "workers.tasks"
    # Workers.
    lease_seconds: float = 30.0
    max_deliveries: int = 5
    shutdown_grace_seconds: float = 30.0
    worker_concurrency: int = 100
    worker_queues: str = ""
    # Freeze what start-up made and collect garbage rarely (see ``workers.gc_tuning``).
    worker_gc_freeze: bool = True
    # Each worker process serves its own Prometheus metrics on this port (0: none).
    worker_metrics_port: int = 0
    worker_metrics_host: str = "0.0.0.0"
    # Live updates.
    stream_token_ttl_seconds: int = 300
    sse_keepalive_seconds: float = 15.0
    sse_retry_ms: int = 2_000
    long_poll_max_seconds: float = 30.0
    # Open SSE streams plus waiting long polls one owner may hold on one web process; past
    # it a new one is answered 429 with Retry-After. 0: no cap. Without auth every client
    # is the one local user, so there it caps the whole process.
    max_streams_per_owner: int = 100
    poll_retry_after_seconds: int = 1
    # Completion webhooks (Standard Webhooks): callback_url hosts allowed (comma-separated,
    # exact names; empty: callback_url is refused), the signing key ("whsec_" + base64), and
    # how long a delivery is retried before it is given up. Hosts need a secret, or no process
    # starts. Each attempt waits webhook_timeout_seconds for an answer.
    webhook_allowed_hosts: str = ""
    webhook_secret: str | None = None
    webhook_max_seconds: int = 3_600
    webhook_timeout_seconds: float = 10.0
    # Scheduler.
    cleanup_interval_seconds: int = 60
    dead_retention_seconds: int = 7 * 86_400
    # The reaper: how often it looks for lost jobs, and what it does with a PENDING job
    # whose message is gone ("resend": a new dispatch; "fail": FAILURE with a Lost error).
    reaper_interval_seconds: int = 30
    reap_pending: ReapPending = "resend"

    def __post_init__(self) -> None:
        try:
            topology = parse_redis_url(self.redis_url)
        except InvalidRedisUrl as err:
            raise msgspec.ValidationError(str(err)) from None
        if self.partitions < 0 or self.partitions > MAX_PARTITIONS:
            raise msgspec.ValidationError(f"partitions must be 0 (the default) to {MAX_PARTITIONS}")
        if self.create_replicas < 0 or self.create_replicas_timeout_ms < 1:
            raise msgspec.ValidationError("create_replicas must be 0 or more, its timeout at least 1 ms")
        if topology.cluster and self.create_replicas:
            raise msgspec.ValidationError(
                "create_replicas is for one Redis or Sentinel; on Cluster each primary's replicas "
                "are its own (see the README, 'What each topology can lose')"
            )
        if self.lease_seconds <= 0:
            raise msgspec.ValidationError("lease_seconds must be positive")
        if self.retention_seconds < 0:
            raise msgspec.ValidationError("retention_seconds must be 0 (not kept) or more")
        if self.max_deliveries < 1:
            raise msgspec.ValidationError("max_deliveries must be at least 1")
        if self.max_streams_per_owner < 0:
            raise msgspec.ValidationError("max_streams_per_owner must be 0 (no cap) or more")
        if self.cleanup_interval_seconds < 1 or self.reaper_interval_seconds < 1:
            raise msgspec.ValidationError("scheduler intervals must be at least 1 second")
        self._check_webhooks()

    def _check_webhooks(self) -> None:
        """A list of webhook hosts that reads, and a valid signing key whenever hosts are listed."""
        try:
            hosts = parse_allowed_hosts(self.webhook_allowed_hosts)
            if self.webhook_secret is not None:
                decode_secret(self.webhook_secret)
        except ValueError as err:  # BadWebhookSecret too
            raise msgspec.ValidationError(str(err)) from None
        if hosts and self.webhook_secret is None:
            raise msgspec.ValidationError(
                "webhook_allowed_hosts needs webhook_secret (whsec_ + base64 of 24 to 64 random bytes)"
            )
        if self.webhook_max_seconds < 1 or self.webhook_timeout_seconds <= 0:
            raise msgspec.ValidationError("webhook_max_seconds and webhook_timeout_seconds must be positive")

    @property
    def topology(self) -> Topology:
        """Where Redis is (``redis_url``, read)."""
        return parse_redis_url(self.redis_url)

    @property
    def partition_count(self) -> int:
        """How many partitions: ``partitions``, or the topology's default when it is 0."""
        if self.partitions:
            return self.partitions
        return DEFAULT_CLUSTER_PARTITIONS if self.topology.cluster else 1

    @property
    def keys(self) -> Keys:
        """The key schema of ``prefix`` and ``partition_count``."""
        return Keys(self.prefix, self.partition_count)

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues a worker of this process consumes (``JOBSTREAM_WORKER_QUEUES``)."""
        names = tuple(q.strip() for q in self.worker_queues.split(",") if q.strip())
        return names or (self.default_queue,)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build :class:`Settings` from the environment (or ``environ``) plus explicit overrides."""
    env = os.environ if environ is None else environ
    fields = {f.lower() for f in Settings.__struct_fields__}
    raw: dict[str, object] = {}
    for name, value in env.items():
        if name.startswith(_ENV_PREFIX):
            field = name[len(_ENV_PREFIX) :].lower()
            if field in fields:
                raw[field] = value
    raw.update(overrides)
    return msgspec.convert(raw, Settings, strict=False)
