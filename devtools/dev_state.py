"""Where a running ``jobstream dev`` is: ``.jobstream/dev.json`` in the folder it runs in.

``jobstream dev`` writes the file once its processes have started and deletes it when it
stops; every other ``jobstream`` command run in that folder (or below it) reads it, so
``jobstream schedule list`` or ``jobstream get`` talk to dev's Redis and web app without
``JOBSTREAM_REDIS_URL`` or ``--url``. The file names the supervisor's pid, and a file whose
process is gone (dev was SIGKILLed) is ignored. It holds the Redis URL only for the embedded
Redis (no password); a Redis given to dev in ``JOBSTREAM_REDIS_URL`` is not written down, so
a secret in its URL never reaches the disk: set the variable for the other commands too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import msgspec

STATE_PATH = Path(".jobstream") / "dev.json"
REDIS_URL_ENV = "JOBSTREAM_REDIS_URL"
URL_ENV = "JOBSTREAM_URL"


class DevState(msgspec.Struct, frozen=True):
    """A running ``jobstream dev``: its pid, its web app's URL and its embedded Redis's URL."""

    pid: int
    url: str
    redis_url: str | None = None

    @contextlib.contextmanager
    def written(self, folder: Path | None = None) -> Iterator[Path]:
        """Write the file (owner-only) for as long as the block runs."""
        path = (folder or Path.cwd()) / STATE_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(msgspec.json.encode(self))
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                if path.read_bytes() == msgspec.json.encode(self):  # another dev may have replaced it
                    path.unlink()


def find_dev(start: Path | None = None) -> DevState | None:
    """The ``jobstream dev`` running in ``start`` (the current folder) or a folder above it."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / STATE_PATH
        try:
            state = msgspec.json.decode(path.read_bytes(), type=DevState)
        except (OSError, msgspec.DecodeError):
            continue
        if _alive(state.pid):
            return state
    return None


def adopt_dev(environ: MutableMapping[str, str], start: Path | None = None) -> DevState | None:
    """Point ``environ`` at a running ``jobstream dev`` (``JOBSTREAM_REDIS_URL``, ``JOBSTREAM_URL``)
    where it names no Redis or server of its own; answers the dev found, if any."""
    if environ.get(REDIS_URL_ENV) and environ.get(URL_ENV):
        return None
    state = find_dev(start)
    if state is None:
        return None
    if state.redis_url and not environ.get(REDIS_URL_ENV):
        environ[REDIS_URL_ENV] = state.redis_url
    environ.setdefault(URL_ENV, state.url)
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
