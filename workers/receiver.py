"""``JobReceiver``: Taskiq's worker receiver with a direct path for ``JobBroker`` deliveries.

For every message, Taskiq's ``Receiver`` builds a pydantic ``TaskiqMessage``, parses its
labels, resolves dependencies, runs middleware hooks, wraps the outcome in a
``TaskiqResult`` and hands it to the result backend, and it fetches each message through
two helper tasks and two ``asyncio.wait`` calls. A jobstream job needs none of that (its
state lives in the job record), and at a few thousand noop jobs a second that machinery
was most of a worker's CPU. This receiver keeps Taskiq's own admission code (the
``max_async_tasks`` limit, ``max_prefetch``, ``max_tasks_per_child``, and the
``wait_tasks_timeout`` grace on shutdown) and changes two steps only:

- a delivery from a ``JobBroker`` without middlewares comes as a bare frame (no pydantic
  ``AckableMessage``) and goes straight to the broker's job runner
  (``JobBroker.run_delivered``), which releases the entry when done;
- an entry the broker's last XREADGROUP already returned is taken without helper tasks,
  when a delivery slot is free at once; a read that has to wait for Redis still goes the
  usual way, racing the shutdown signal.

Run it with ``taskiq worker workers.app:broker --receiver workers.receiver:JobReceiver``
(``python -m workers`` does). Under Taskiq's default receiver the broker works the same,
only slower.
"""

from __future__ import annotations

import asyncio
from typing import Any

from taskiq import AckableMessage, AsyncBroker
from taskiq.receiver import Receiver

from workers.job_broker import JobBroker


class JobReceiver(Receiver):
    """``taskiq.receiver.Receiver`` that runs ``JobBroker`` deliveries directly."""

    def __init__(self, broker: AsyncBroker, *args: Any, **kwargs: Any) -> None:
        super().__init__(broker, *args, **kwargs)
        self.jobs: JobBroker | None = None
        if isinstance(broker, JobBroker) and not broker.middlewares:
            self.jobs = broker
            broker.yield_frames = True  # nothing to acknowledge: run_delivered releases the entry

    async def callback(self, message: bytes | AckableMessage, raise_err: bool = False) -> None:
        """Run a job delivery directly; anything else the way Taskiq does."""
        if self.jobs is not None and isinstance(message, bytes):
            await self.jobs.run_delivered(message)
            return
        await super().callback(message, raise_err)

    async def _get_prefetched_message(
        self, state: Any, finish_event: asyncio.Event, finish_waiter: asyncio.Task[bool]
    ) -> bytes | AckableMessage | None:
        """Take an entry already read, without a task or a wait, when a slot is free now."""
        jobs = self.jobs
        if jobs is None or jobs.ready <= 0 or self.sem_prefetch.locked() or finish_event.is_set():
            return await super()._get_prefetched_message(state, finish_event, finish_waiter)
        await self.sem_prefetch.acquire()  # free now: returns without suspending
        state.owns_delivery_slot = True
        try:
            message: bytes | AckableMessage = await anext(state.iterator)  # buffered: no I/O
        except BaseException:
            self._release_delivery_slot(state)
            raise
        return message
