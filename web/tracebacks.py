"""What of a job a caller sees when it leaves the web process: its traceback and its worker.

A failed job's traceback (``error.details.traceback``): admins always see it; an owner, or a
service acting for owners, only when ``settings.expose_tracebacks``
(``JOBSTREAM_EXPOSE_TRACEBACKS``, on in ``jobstream dev``): a traceback names files,
functions and values of the server's code. The job's ``worker`` (host, pid and consumer of
the process running it) is an operator's business: admins only. Every route and stream
that sends a job passes it through :func:`shown_to` (or a stream's :class:`JobView`); the
task's own details stay. The public Python API (``broker.Jobstream``) runs on the server
and always has both.

Hiding costs nothing for a job with nothing to hide (it is returned as it is), and it
depends only on the caller, so one version of a job always has one body for one caller
(ETags hold).
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.models import Job, without_traceback, without_worker
from broker.settings import Settings
from web.auth import User


def sees_tracebacks(caller: User, settings: Settings) -> bool:
    """Whether ``caller`` is shown tracebacks: an admin always, anyone when the setting says so."""
    return caller.admin or settings.expose_tracebacks


@dataclass(frozen=True, slots=True)
class JobView:
    """What one caller may not see of a job: its traceback, its worker."""

    hide_tracebacks: bool = False
    hide_worker: bool = False

    @classmethod
    def of(cls, caller: User, settings: Settings) -> JobView:
        """The view of ``caller``: an admin sees everything."""
        return cls(hide_tracebacks=not sees_tracebacks(caller, settings), hide_worker=not caller.admin)

    def apply(self, job: Job) -> Job:
        """``job`` as this view shows it (the same object when nothing is hidden)."""
        if self.hide_worker:
            job = without_worker(job)
        if self.hide_tracebacks and job.error is not None:
            job = without_traceback(job)
        return job


def shown_to(job: Job, caller: User, settings: Settings) -> Job:
    """``job`` as ``caller`` may see it (see :class:`JobView`)."""
    return JobView.of(caller, settings).apply(job)
