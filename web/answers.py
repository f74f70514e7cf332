"""``JsonAnswer``: a JSON answer encoded once by msgspec and sent as it is, for the hot routes."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from litestar.openapi import ResponseSpec
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

_encode = msgspec.json.Encoder().encode


class JsonAnswer:
    """An ASGI app that answers ``body`` as JSON with ``headers`` and ``status_code``.

    A handler returning one skips Litestar's response pipeline (``Response``, then
    ``to_asgi_response``: a serializer pass and a scan of the header list for every
    header added), which cost a tenth of a ``POST /jobs`` under wrk; Litestar sends an
    ASGI app that a handler returns as it is. The app defines no layer-wide response
    headers or cookies, which such an answer would not carry. Routes document the body
    with :func:`json_answers`.
    """

    __slots__ = ("_body", "_start")

    def __init__(
        self, body: msgspec.Struct | None, headers: Mapping[str, str], status_code: int = 200
    ) -> None:
        self._body = b"" if body is None else _encode(body)
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        if body is not None:
            raw += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(self._body))]
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status_code, "headers": raw}
        self._start = start

    @classmethod
    def not_modified(cls, headers: Mapping[str, str]) -> JsonAnswer:
        """304: no body, with the validators and hints the 200 would have carried."""
        return cls(None, headers, 304)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(self._start)
        body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": self._body, "more_body": False}
        await send(body)


def json_answers(body: type[msgspec.Struct], descriptions: Mapping[int, str]) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the statuses a route answers with ``body`` through :class:`JsonAnswer`."""
    return {
        status: ResponseSpec(body, description=text, generate_examples=False)
        for status, text in descriptions.items()
    }
