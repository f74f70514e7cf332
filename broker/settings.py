"""One typed settings object, read from ``JOBSTREAM_*`` environment variables in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from broker.keys import Keys
from broker.topology import InvalidRedisUrl, Topology, parse_redis_url
from broker.webhook_signing import decode_secret
from broker.webhook_targets import parse_allowed_hosts

AuthMode = Literal["jwt", "none"]
JwtAlgorithm = Literal["HS256", "HS384", "HS512"]
"""HMAC only: stream tokens are signed with the same shared secret as the bearer tokens."""
ReapPending = Literal["resend", "fail"]
LogFormat = Literal["auto", "json", "text"]


def _doc(meaning: str) -> msgspec.Meta:
    """What a settings field means (``Annotated[type, _doc(...)]``), which ``jobstream config``
    and the README's table print."""
    return msgspec.Meta(description=meaning)


_ENV_PREFIX = "JOBSTREAM_"
MAX_PARTITIONS = 1024
DEFAULT_CLUSTER_PARTITIONS = 16
"""Partitions on Cluster when not set: enough to spread over a few primaries."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a jobstream process can be configured with.

    Each field maps to ``JOBSTREAM_<FIELD_NAME_UPPERCASE>``; values are converted and
    validated by msgspec, so a typo in a number fails at start-up, not mid-request.
    """

    redis_url: Annotated[
        str,
        _doc(
            "Where Redis is: redis://[:password@]host:port/db (one Redis), "
            "redis+sentinel://h:p,h:p/<primary> (Sentinel) or redis+cluster://h:p,h:p (Cluster)"
        ),
    ] = "redis://127.0.0.1:6379/0"
    prefix: Annotated[str, _doc("What every Redis key and channel of this deployment starts with")] = "js:"
    partitions: Annotated[
        int,
        _doc(
            "Partitions queues, indexes and events are split into, each in one Cluster slot (0: 1 on one "
            "Redis or Sentinel, 16 on Cluster); the same in every process, raised but never lowered"
        ),
    ] = 0
    create_replicas: Annotated[
        int,
        _doc("POST /jobs answers 202 only once this many replicas have the job (Redis WAIT; not on Cluster)"),
    ] = 0
    create_replicas_timeout_ms: Annotated[
        int, _doc("How long a create waits for create_replicas before its 503")
    ] = 1_000
    auth: Annotated[
        AuthMode, _doc("jwt (bearer tokens) or none (one local user: trusted networks, jobstream dev)")
    ] = "jwt"
    jwt_secret: Annotated[
        str | None, _doc("HMAC key bearer JWTs are signed with (32/48/64+ bytes for HS256/384/512)")
    ] = None
    jwt_algorithm: Annotated[JwtAlgorithm, _doc("HS256, HS384 or HS512")] = "HS256"
    local_user: Annotated[str, _doc("The one owner of the no-auth mode")] = "local"
    admin_role: Annotated[
        str, _doc("The role (in the roles claim) that sees and cancels every owner's jobs")
    ] = "admin"
    metrics_token: Annotated[
        str | None,
        _doc("A bearer credential (32+ bytes) that reads /metrics and /events/stats only (Prometheus)"),
    ] = None
    jwks_url: Annotated[
        str | None, _doc("Verify bearer JWTs against an identity provider's published keys")
    ] = None
    jwt_issuer: Annotated[str | None, _doc("The iss a JWKS-verified token must carry")] = None
    jwt_audience: Annotated[str | None, _doc("The aud a JWKS-verified token must carry")] = None
    stream_token_secret: Annotated[
        str | None,
        _doc("Key (32+ bytes) stream tokens are signed with; else the JWT secret, else one per process"),
    ] = None
    jwt_roles_claim: Annotated[
        str, _doc("Where a token keeps its roles: a claim, or a dotted path (realm_access.roles)")
    ] = "roles"
    service_role: Annotated[
        str, _doc("The role that creates jobs for another owner and reads any owner's jobs")
    ] = "service"
    cors_origins: Annotated[
        str, _doc("Browser origins allowed to call the API, comma-separated (empty: no CORS)")
    ] = ""
    active_ttl_seconds: Annotated[int, _doc("How long a job record lives while PENDING or PROCESSING")] = (
        86_400
    )
    retention_seconds: Annotated[
        int,
        _doc("How long a finished job is kept (a task's retention overrides it; 0: deleted once published)"),
    ] = 7 * 86_400
    max_body_bytes: Annotated[int, _doc("Largest request body (413 past it)")] = 1_048_576
    max_active_per_owner: Annotated[
        int, _doc("Jobs one owner may have PENDING or PROCESSING (429 past it)")
    ] = 10_000
    fetched_grace_seconds: Annotated[
        int, _doc("How long a keep_until_fetched task's finished record stays once its result was read")
    ] = 60
    expose_tracebacks: Annotated[
        bool, _doc("Owners see their failed jobs' tracebacks (admins always do)")
    ] = False
    default_queue: Annotated[str, _doc("The queue of a task that names none")] = "default"
    task_modules: Annotated[
        str, _doc("Comma-separated modules whose import registers the tasks (web and workers)")
    ] = "workers.tasks"
    lease_seconds: Annotated[
        float, _doc("A running job's lease: renewed every third of it; a dead worker's job restarts after it")
    ] = 30.0
    max_deliveries: Annotated[
        int, _doc("Deliveries of one message before it goes to the dead-letter stream")
    ] = 5
    shutdown_grace_seconds: Annotated[
        float,
        _doc("On SIGTERM a worker lets running jobs finish this long (and jobstream dev waits as long)"),
    ] = 30.0
    worker_concurrency: Annotated[int, _doc("Jobs one worker process runs at once (its slots)")] = 100
    worker_queues: Annotated[
        str, _doc("Queues a worker consumes, comma-separated (empty: the default queue)")
    ] = ""
    worker_gc_freeze: Annotated[
        bool,
        _doc("A worker freezes its start-up objects and collects garbage rarely (see workers.gc_tuning)"),
    ] = True
    worker_metrics_port: Annotated[
        int, _doc("Each worker process serves its Prometheus metrics on this port (0: none)")
    ] = 0
    worker_metrics_host: Annotated[str, _doc("The address a worker's metrics endpoint listens on")] = (
        "0.0.0.0"
    )
    log_format: Annotated[LogFormat, _doc("auto (JSON lines unless stderr is a terminal), json or text")] = (
        "auto"
    )
    stream_token_ttl_seconds: Annotated[int, _doc("How long a stream token opens its stream")] = 300
    sse_keepalive_seconds: Annotated[
        float, _doc("A quiet SSE stream gets a keepalive comment this often")
    ] = 15.0
    sse_retry_ms: Annotated[int, _doc("The retry: an SSE stream tells EventSource")] = 2_000
    long_poll_max_seconds: Annotated[float, _doc("The longest GET /jobs/{id}?wait= waits")] = 30.0
    max_streams_per_owner: Annotated[
        int,
        _doc(
            "Open SSE streams and waiting long polls of one owner on one web process (429 past it; 0: no cap)"
        ),
    ] = 100
    poll_retry_after_seconds: Annotated[int, _doc("The Retry-After polling hint of an active job")] = 1
    webhook_allowed_hosts: Annotated[
        str, _doc("Hosts a callback_url may name, comma-separated (empty: completion webhooks are off)")
    ] = ""
    webhook_secret: Annotated[
        str | None, _doc("The webhooks' signing key: whsec_ and base64 of 24-64 random bytes")
    ] = None
    webhook_max_seconds: Annotated[int, _doc("How long after a job ended its webhook is retried")] = 3_600
    webhook_timeout_seconds: Annotated[float, _doc("How long one webhook attempt waits for an answer")] = 10.0
    cleanup_interval_seconds: Annotated[
        int, _doc("How often the scheduler prunes what expired jobs left behind")
    ] = 60
    dead_retention_seconds: Annotated[int, _doc("How long dead letters are kept")] = 7 * 86_400
    reaper_interval_seconds: Annotated[int, _doc("How often the scheduler looks for lost jobs")] = 30
    reap_pending: Annotated[
        ReapPending,
        _doc("A PENDING job whose message is gone: resend (a new dispatch) or fail (FAILURE, Lost)"),
    ] = "resend"

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
