"""A webhook receiver for the tests: an HTTP server on 127.0.0.1 that records every POST.

Each test asks for a path of its own (``receiver.path()``) and says how that path answers:
a list of statuses used in turn (then 200), and how many requests it holds without an
answer until ``release()`` (a delivery cut off mid-request). One server serves a module.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.polling import until

HOLD_SECONDS = 30.0
"""The longest a held request waits for ``release`` (then the connection just closes)."""


@dataclass
class Received:
    """One request as it arrived: its headers (lower-case names) and body bytes."""

    headers: dict[str, str]
    body: bytes


@dataclass
class _Path:
    statuses: list[int]
    hold: int
    received: list[Received] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)


class WebhookReceiver:
    """The server, the paths the tests made, and what each received."""

    def __init__(self) -> None:
        self._paths: dict[str, _Path] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.allowed_hosts = f"http://127.0.0.1:{self.port}"
        """What ``JOBSTREAM_WEBHOOK_ALLOWED_HOSTS`` lists for this receiver."""

    def path(self, statuses: list[int] | None = None, hold: int = 0) -> str:
        """A new path's URL: it answers ``statuses`` in turn, then 200; holds its first ``hold``."""
        name = f"/hooks/{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._paths[name] = _Path(list(statuses or []), hold)
        return self.base_url + name

    def received(self, url: str) -> list[Received]:
        """What ``url`` (from :meth:`path`) has received so far."""
        with self._lock:
            return list(self._paths[url.removeprefix(self.base_url)].received)

    async def wait_for(self, url: str, count: int, timeout: float = 20.0) -> list[Received]:
        """The first ``count`` requests ``url`` received, once it has (bounded by ``timeout``)."""

        async def arrived() -> list[Received] | None:
            got = self.received(url)
            return got if len(got) >= count else None

        return await until(arrived, timeout, f"{count} webhook(s) at {url}")

    def release(self, url: str | None = None) -> None:
        """Let the requests held at ``url`` (None: everywhere) end, their connections closed unanswered."""
        with self._lock:
            paths = [self._paths[url.removeprefix(self.base_url)]] if url else list(self._paths.values())
        for path in paths:
            path.released.set()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("content-length") or 0))
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            path = self._paths.get(request.path)
            if path is not None:
                path.received.append(Received(headers, body))
                held = path.hold > 0
                path.hold -= 1 if held else 0
                status = path.statuses.pop(0) if path.statuses and not held else 200
        if path is None:
            request.send_error(404)
            return
        if held:
            path.released.wait(HOLD_SECONDS)
            request.close_connection = True
            return
        request.send_response(status)
        request.send_header("content-length", "0")
        request.end_headers()


@contextmanager
def running_receiver() -> Iterator[WebhookReceiver]:
    """A receiver serving on its own thread until the block ends."""
    receiver = WebhookReceiver()
    thread = threading.Thread(target=receiver.server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(5)
