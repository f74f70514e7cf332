"""Who sees a failed job's traceback (``error.details.traceback``) when a job leaves the web process.

Admins always do; an owner, or a service acting for owners, only when
``settings.expose_tracebacks`` (``JOBSTREAM_EXPOSE_TRACEBACKS``, on in ``jobstream dev``):
a traceback names files, functions and values of the server's code. Every route and
stream that sends a job passes it through :func:`shown_to`; the task's own details stay.
The public Python API (``broker.Jobstream``) runs on the server and always has it.

Hiding costs nothing for a job without an error (it is returned as it is), and it depends
only on the caller, so one version of a job always has one body for one caller (ETags hold).
"""

from __future__ import annotations

from broker.models import Job, without_traceback
from broker.settings import Settings
from web.auth import User


def sees_tracebacks(caller: User, settings: Settings) -> bool:
    """Whether ``caller`` is shown tracebacks: an admin always, anyone when the setting says so."""
    return caller.admin or settings.expose_tracebacks


def shown_to(job: Job, caller: User, settings: Settings) -> Job:
    """``job`` as ``caller`` may see it: without its traceback unless :func:`sees_tracebacks`."""
    if job.error is None or sees_tracebacks(caller, settings):
        return job
    return without_traceback(job)
