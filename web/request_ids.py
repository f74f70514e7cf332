"""A request id for every HTTP request: the caller's ``X-Request-ID`` when it is a sane one (1-128
of ``A-Z a-z 0-9 . _ : -``), else a fresh one. Every log line of the request names it
(``request_id`` in the JSON lines, :mod:`broker.log_format`), the access log's included, and
the answer carries it back in ``X-Request-ID``, so a user's report finds its lines.

A plain ASGI middleware: a counter behind a random per-process prefix makes the id (no
``uuid4`` per request on the hot routes), and a context variable carries it to the loggers.
"""

from __future__ import annotations

import itertools
import re
import secrets
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker.log_format import reset_request_id, set_request_id

HEADER = b"x-request-id"
_SANE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_PROCESS = secrets.token_hex(4)
_numbers = itertools.count(1)


def request_id_of(headers: Any) -> str:
    """The caller's id, if sane, else a new one (``<process>-<n>``, unique across processes)."""
    for name, value in headers:
        if name == HEADER and _SANE.match(value):
            return str(value.decode())
    return f"{_PROCESS}-{next(_numbers):x}"


class RequestIds:
    """ASGI middleware: sets the request's id for its log lines and sends it back as a header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        header = (HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = set_request_id(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_request_id(token)
