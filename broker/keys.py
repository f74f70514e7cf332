"""The Redis key schema: the only module that formats a Redis key or channel name.

Queues, jobs, owner indexes, webhooks and events are split into partitions
(``JOBSTREAM_PARTITIONS``). Every key and channel of one partition carries the hash tag
``{p<n>}``, so each script touches one Redis Cluster slot, and a job's id says its
partition (:func:`partition_of`), so a job's keys are found without a lookup. Worker
heartbeats, schedules and locks are single keys outside the partitions.
"""

from __future__ import annotations

import hashlib

PARTITION_HEX_DIGITS = 3
"""A job id ends with its partition number in this many hex digits (see :mod:`broker.ids`)."""


def partition_of(job_id: str) -> int:
    """The partition a job id names (its last hex digits); 0 for a string that is no job id,
    whose keys then simply do not exist."""
    try:
        return int(job_id[-PARTITION_HEX_DIGITS:], 16)
    except ValueError:
        return 0


class Keys:
    """Key and channel names under one prefix (``js:`` by default), in ``partitions`` partitions."""

    __slots__ = ("partitions", "prefix")

    def __init__(self, prefix: str, partitions: int = 1) -> None:
        self.prefix = prefix
        self.partitions = partitions

    def tag(self, partition: int) -> str:
        """What every key of ``partition`` starts with: the prefix and the hash tag."""
        return f"{self.prefix}{{p{partition}}}:"

    def partition_of_key(self, key: bytes | str) -> int:
        """The partition of a key (or channel) this schema named: the number in its hash tag."""
        text = key.decode() if isinstance(key, bytes) else key
        return int(text[len(self.prefix) + 2 : text.index("}", len(self.prefix))])

    # -- one job ---------------------------------------------------------------------------

    def job(self, job_id: str) -> str:
        """The job record hash."""
        return f"{self.tag(partition_of(job_id))}job:{job_id}"

    def webhook(self, job_id: str) -> str:
        """The completion webhook of an ended job: its terminal record, URL, attempts, deadline."""
        return f"{self.tag(partition_of(job_id))}webhook:{job_id}"

    # -- per partition ---------------------------------------------------------------------

    def events(self, partition: int) -> str:
        """Shard channel (SPUBLISH) with every change of the partition's jobs: a header line
        ``["<id>","<owner>"]``, then the whole record as a JSON array ``[field, value, ...]``."""
        return f"{self.tag(partition)}events"

    def cancels(self, partition: int) -> str:
        """Shard channel on which cancel requests for the partition's running jobs reach workers."""
        return f"{self.tag(partition)}cancel"

    def webhooks_due(self, partition: int) -> str:
        """Sorted set of job ids whose webhook is due, by due ms (a claimed one: by lease end)."""
        return f"{self.tag(partition)}webhooks:due"

    def all_jobs(self, partition: int) -> str:
        """Sorted set of every job id in the partition, by the creation sequence of the owner
        indexes: what an admin lists, merged over the partitions as an owner's are."""
        return f"{self.tag(partition)}jobs"

    def counts(self, partition: int) -> str:
        """Hash of the partition's running totals, kept by the scripts: ``created:<task>``."""
        return f"{self.tag(partition)}counts"

    def owner_jobs(self, owner: str, partition: int) -> str:
        """Sorted set of the owner's job ids in the partition, by creation sequence."""
        return f"{self.tag(partition)}owner:{owner}:jobs"

    def owner_active(self, owner: str, partition: int) -> str:
        """Set of the owner's PENDING/PROCESSING job ids in the partition, for the quota."""
        return f"{self.tag(partition)}owner:{owner}:active"

    def idempotency(self, owner: str, key: str, partition: int) -> str:
        """Idempotency key -> job id, in the partition of the job it made (the store picks it
        from the key, so replays look there). The client's key is hashed: any bytes are safe."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.tag(partition)}idem:{owner}:{digest}"

    def queue(self, name: str, partition: int) -> str:
        """The stream of Taskiq messages for one queue in one partition."""
        return f"{self.tag(partition)}queue:{name}"

    def queue_of(self, stream: bytes | str) -> tuple[str, int]:
        """The queue name and partition of a queue stream key."""
        text = stream.decode() if isinstance(stream, bytes) else stream
        partition = self.partition_of_key(text)
        return text.removeprefix(f"{self.tag(partition)}queue:"), partition

    def delayed(self, name: str, partition: int) -> str:
        """Sorted set of messages due later (delayed jobs, retry backoff), score = due ms."""
        return f"{self.tag(partition)}queue:{name}:delayed"

    def dead(self, name: str, partition: int) -> str:
        """Stream of messages that exhausted their deliveries."""
        return f"{self.tag(partition)}queue:{name}:dead"

    # -- SCAN patterns (every partition) ---------------------------------------------------

    @property
    def owner_index_pattern(self) -> str:
        """SCAN pattern over owner job indexes."""
        return f"{self.prefix}{{p*}}:owner:*:jobs"

    @property
    def owner_active_pattern(self) -> str:
        """SCAN pattern over owner active-job sets."""
        return f"{self.prefix}{{p*}}:owner:*:active"

    @property
    def dead_pattern(self) -> str:
        """SCAN pattern over dead-letter streams."""
        return f"{self.prefix}{{p*}}:queue:*:dead"

    @property
    def idempotency_pattern(self) -> str:
        """SCAN pattern over idempotency keys."""
        return f"{self.prefix}{{p*}}:idem:*"

    # -- outside the partitions ------------------------------------------------------------

    def worker(self, consumer: str) -> str:
        """A live worker's heartbeat hash."""
        return f"{self.prefix}worker:{consumer}"

    @property
    def worker_pattern(self) -> str:
        """SCAN pattern over worker heartbeat hashes."""
        return f"{self.prefix}worker:*"

    def schedule(self, schedule_id: str) -> str:
        """A runtime schedule, as JSON (the layout of taskiq-redis's ``ListRedisScheduleSource``)."""
        return f"{self.prefix}schedule:data:{schedule_id}"

    @property
    def schedule_pattern(self) -> str:
        """SCAN pattern over runtime schedules."""
        return self.schedule("*")

    @property
    def cron_schedules(self) -> str:
        """List of the ids of cron schedules."""
        return f"{self.prefix}schedule:cron"

    @property
    def interval_schedules(self) -> str:
        """List of the ids of interval schedules."""
        return f"{self.prefix}schedule:interval"

    def timed_schedules(self, minute: str) -> str:
        """List of the ids of one-shot schedules due in ``minute`` (``YYYY-MM-DDTHH:MM``, UTC)."""
        return f"{self.prefix}schedule:time:{minute}"

    @property
    def meta(self) -> str:
        """Sorted set of facts every process checks at start: ``partitions``, the highest
        partition count any process used here."""
        return f"{self.prefix}meta"

    @property
    def replication_marker(self) -> str:
        """A channel nobody listens to: a PUBLISH on it before ``WAIT`` makes the WAIT cover
        every write the primary took so far, not only the connection's own (see ``broker.batching``)."""
        return f"{self.prefix}replication-marker"

    def lock(self, name: str) -> str:
        """A lock with an expiry (scheduler ticks)."""
        return f"{self.prefix}lock:{name}"

