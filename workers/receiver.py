"""``JobReceiver``: Taskiq's worker receiver, taking a batch of jobs per message.

For every message, Taskiq's ``Receiver`` builds a pydantic ``TaskiqMessage``, parses its
labels, resolves dependencies, runs middleware hooks, wraps the outcome in a
``TaskiqResult`` and hands it to the result backend, and it fetches each message through
two helper tasks and two ``asyncio.wait`` calls. A jobstream job needs none of that (its
state lives in the job record), and at a few thousand noop jobs a second that machinery
was most of a worker's CPU. Through public hooks only, this receiver asks a ``JobBroker``
without middlewares for batches (``JobBroker.deliver_in_batches``: everything one read
from Redis returned, as one message) and runs each batch with ``JobBroker.run_batch`` from
``callback``. Taskiq's own admission code stays: the prefetch limit, and the
``wait_tasks_timeout`` grace on shutdown; the broker reads only as many entries as it has
room for under ``max_async_tasks``, so that limit still caps the jobs running at once
(``max_tasks_per_child`` counts batches, not jobs).

Run it with ``taskiq worker workers.app:broker --receiver workers.receiver:JobReceiver``
(``python -m workers`` does). Under Taskiq's default receiver the broker works the same,
one message per job, only slower.
"""

from __future__ import annotations

from typing import Any

from taskiq import AckableMessage, AsyncBroker
from taskiq.receiver import Receiver

from workers.job_broker import JobBroker


class JobReceiver(Receiver):
    """``taskiq.receiver.Receiver`` that runs ``JobBroker`` deliveries a batch at a time."""

    def __init__(self, broker: AsyncBroker, *args: Any, **kwargs: Any) -> None:
        super().__init__(broker, *args, **kwargs)
        self.jobs: JobBroker | None = None
        if isinstance(broker, JobBroker) and not broker.middlewares:
            self.jobs = broker
            broker.deliver_in_batches(kwargs.get("max_async_tasks") or broker.settings.worker_concurrency)

    async def callback(self, message: bytes | AckableMessage, raise_err: bool = False) -> None:
        """Run a batch of job deliveries directly; anything else the way Taskiq does."""
        if self.jobs is not None and isinstance(message, bytes):
            await self.jobs.run_batch(message)
            return
        await super().callback(message, raise_err)
