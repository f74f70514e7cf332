"""End long-lived responses as soon as the server is told to stop, not after.

On SIGTERM uvicorn stops accepting, then waits for every open request to finish before it
runs the lifespan shutdown; an SSE stream or a long poll never finishes by itself, so the
lifespan's clean-up would never come (or come only after ``--timeout-graceful-shutdown``,
which cancels them with an ERROR in the log). :func:`on_exit_signal` chains onto the
handler the server installed for SIGTERM/SIGINT, so the app learns of the signal when the
server does and can end its streams itself.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SignalHandler = Callable[[int, FrameType | None], Any]


@contextmanager
def on_exit_signal(callback: Callable[[], None]) -> Iterator[None]:
    """While inside, call ``callback`` in the running loop whenever SIGTERM or SIGINT arrives.

    Only where a server installed its own Python handler for the signal (uvicorn, gunicorn's
    workers, hypercorn do): that handler still runs, after ``callback`` is scheduled. Without
    one (an in-process test client, a non-main thread) nothing is installed; the lifespan
    shutdown still ends the streams there. The previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    restore: list[tuple[signal.Signals, SignalHandler, Any]] = []
    for sig in EXIT_SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous) or previous is signal.default_int_handler:
            continue
        handler = _chain(loop, callback, previous)
        signal.signal(sig, handler)
        restore.append((sig, handler, previous))
    try:
        yield
    finally:
        for sig, handler, previous in restore:
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)


def _chain(
    loop: asyncio.AbstractEventLoop, callback: Callable[[], None], previous: SignalHandler
) -> SignalHandler:
    """A handler that schedules ``callback`` in ``loop``, then runs the server's own handler."""

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        previous(signum, frame)

    return handler
