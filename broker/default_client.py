"""The process's default :class:`Jobstream`, which task objects use when given no ``client=``.

An app that has its own (opened in its lifespan) makes it the default with
:func:`set_default_jobstream`. Otherwise the first ``submit``/``kiq`` without a client makes
one from the ``JOBSTREAM_*`` environment (:meth:`Jobstream.from_env`); the app closes it
with ``await close_default_jobstream()`` at shutdown (the workers do so on theirs).

A Redis client belongs to the event loop it first ran on, so a default made here is made
again for a new loop (``asyncio.run`` twice, a test per loop); the one an app set is used
as given.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from broker.api import Jobstream


@dataclass(slots=True)
class _Default:
    client: Jobstream | None = None
    loop: asyncio.AbstractEventLoop | None = None
    """The loop a client made here runs on; None for the one an app set."""


_default = _Default()


def default_jobstream() -> Jobstream:
    """The default client: the app's (:func:`set_default_jobstream`), else one from the environment."""
    current = _default.client
    if current is not None and _default.loop in (None, asyncio.get_running_loop()):
        return current
    client = Jobstream.from_env()
    _default.client, _default.loop = client, asyncio.get_running_loop()
    return client


def set_default_jobstream(client: Jobstream | None) -> None:
    """Make ``client`` (the app's, closed by the app) the default; None forgets it."""
    _default.client, _default.loop = client, None


async def close_default_jobstream() -> None:
    """Close the default client if it was made here (one the app set is the app's to close),
    and forget it: the next ``submit`` without a client makes a new one."""
    client, made_here = _default.client, _default.loop is not None
    _default.client, _default.loop = None, None
    if client is not None and made_here:
        await client.aclose()
