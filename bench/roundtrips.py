"""Count a process's Redis round trips without touching product code.

``python -m bench.roundtrips OUT.json MODULE [ARGS...]`` patches redis-py's
``send_packed_command`` (asyncio and sync connections), then runs ``MODULE`` as
``__main__`` with ``ARGS``. Every call of ``send_packed_command`` is one write to Redis
followed by waiting for its replies, i.e. one round trip: a single command, a whole
pipeline, or a blocking read. Each is labelled by the commands it carried (an EVALSHA by
the jobstream script it runs), and the counts are written to ``OUT.json`` every 0.2 s and
at exit.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROUND_TRIPS: Counter[str] = Counter()
COMMANDS: Counter[str] = Counter()


def _script_names() -> dict[str, str]:
    from broker.lua_source import SCRIPT_NAMES, script

    return {script(name).sha: name for name in SCRIPT_NAMES}


_SCRIPTS = _script_names()


def command_names(packed: bytes | str | Iterable[bytes | memoryview]) -> list[str]:
    """The command names in a RESP-packed buffer (EVALSHA named by its jobstream script)."""
    if isinstance(packed, str):
        data = packed.encode()
    elif isinstance(packed, bytes):
        data = packed
    else:
        data = b"".join(bytes(chunk) for chunk in packed)
    names: list[str] = []
    pos = 0
    while pos < len(data) and data[pos : pos + 1] == b"*":
        end = data.index(b"\r\n", pos)
        count = int(data[pos + 1 : end])
        pos = end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : end])
            start = end + 2
            if len(args) < 2:
                args.append(data[start : start + size])
            pos = start + size + 2
        name = args[0].decode().upper() if args else "?"
        if name in {"EVALSHA", "EVALSHA_RO"} and len(args) > 1:
            name = f"EVALSHA {_SCRIPTS.get(args[1].decode(), args[1].decode()[:8])}"
        names.append(name)
    return names


def _label(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    inner = [n for n in names if n not in {"MULTI", "EXEC"}]
    return f"pipeline({len(names)}): " + ",".join(sorted(set(inner)))


def _record(command: Any) -> None:
    try:
        names = command_names(command)
    except (ValueError, IndexError):
        names = ["?"]
    ROUND_TRIPS[_label(names)] += 1
    COMMANDS.update(names)


def install() -> None:
    """Wrap redis-py's ``send_packed_command`` so every round trip is counted."""
    import redis.asyncio.connection as aconn
    import redis.connection as sconn

    async_send = aconn.AbstractConnection.send_packed_command

    async def counted_async(self: Any, command: Any, check_health: bool = True) -> None:
        _record(command)
        await async_send(self, command, check_health)

    sync_send = sconn.AbstractConnection.send_packed_command

    def counted_sync(self: Any, command: Any, check_health: bool = True) -> None:
        _record(command)
        sync_send(self, command, check_health)

    aconn.AbstractConnection.send_packed_command = counted_async  # type: ignore[method-assign]
    sconn.AbstractConnection.send_packed_command = counted_sync  # type: ignore[method-assign]


def dump(out: Path) -> None:
    """Write the counts so far (atomically: write, then rename)."""
    body = {"round_trips": dict(ROUND_TRIPS.items()), "commands": dict(COMMANDS.items())}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(out)


def _flusher(out: Path, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        dump(out)


def main() -> None:
    """Install the counter, run the module as ``__main__``, write the counts at exit."""
    out, module, *args = sys.argv[1:]
    target = Path(out)
    install()
    stop = threading.Event()
    atexit.register(dump, target)
    atexit.register(stop.set)
    threading.Thread(target=_flusher, args=(target, stop), daemon=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
