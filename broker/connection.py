"""A redis-py asyncio connection that packs commands in C (hiredis), as the sync client does.

redis-py's asyncio ``Connection.pack_command`` is pure Python, about a microsecond per
argument; the create script alone has 22 arguments, so packing was a tenth of a
``POST /jobs`` (py-spy, under wrk). redis-py's sync client packs with
``hiredis.pack_command`` when hiredis is installed; this does the same, with the same
argument rules (str/bytes/int/float; anything else is a ``DataError``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio import Connection
from redis.exceptions import DataError
from redis.typing import EncodableT

_pack = cast("Callable[[tuple[Any, ...]], bytes]", hiredis.pack_command)  # its stub says a 1-tuple


class HiredisConnection(Connection):
    """``redis.asyncio.Connection`` with ``hiredis.pack_command`` (pass as ``connection_class``)."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        """The RESP bytes of one command (a multi-word command name is split, as redis-py does)."""
        name: Any = args[0]
        if isinstance(name, str):
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [_pack(args)]
        except TypeError:
            pass
        try:  # hiredis takes bytes but not their views
            return [_pack(tuple(_plain(arg) for arg in args))]
        except TypeError as err:
            raise DataError(str(err)) from None


def _plain(arg: EncodableT) -> EncodableT:
    return bytes(arg) if isinstance(arg, (bytearray, memoryview)) else arg
