"""CORS for browsers on other origins (``JOBSTREAM_CORS_ORIGINS``), through Litestar's ``CORSConfig``.

Litestar answers a preflight (an ``OPTIONS`` with ``Origin``) before routing and before any
authentication, for every path (the SSE routes and ``/jobs`` included), and adds the CORS
headers to every answer to an allowed origin, errors too. A refused origin's preflight is a
400 without ``Access-Control-Allow-Origin``, and its other answers carry none, so the
browser keeps them from the page.

Credentials are allowed (``fetch(..., {credentials: "include"})``, ``new EventSource(url,
{withCredentials: true})``), so a frontend can receive and send the stream cookie; that
cookie is ``SameSite=Strict``, so it travels only between origins of the same site
(``app.example.com`` and ``api.example.com``); a frontend on another site opens streams
with ``?token=``. An origin may use ``*`` inside a name (``https://*.example.com``); a lone
``*`` allows every origin, which browsers refuse to combine with credentials, so it suits
bearer-token clients only.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from litestar.config.cors import CORSConfig

from broker.settings import Settings

REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "If-None-Match", "Last-Event-ID"]
"""What clients send besides the CORS-safelisted headers."""
EXPOSED_HEADERS = ["Location", "ETag", "Retry-After"]
"""What clients read from answers besides the CORS-safelisted ones."""
PREFLIGHT_MAX_AGE_SECONDS = 600


def allowed_origins(settings: Settings) -> list[str]:
    """``JOBSTREAM_CORS_ORIGINS`` as a list; ``ValueError`` for an entry that can never match.

    A browser's ``Origin`` is ``scheme://host[:port]``, never with a path or a trailing
    slash, so ``https://app.example.com/`` is refused at start-up rather than silently
    matching nothing.
    """
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise ValueError(
                f"JOBSTREAM_CORS_ORIGINS: {origin!r} is not an origin; write scheme://host[:port] "
                "with no path or trailing slash, e.g. https://app.example.com"
            )
    return origins


def cors_config(settings: Settings) -> CORSConfig | None:
    """The app's CORS configuration; None (no CORS headers at all) when no origin is set."""
    origins = allowed_origins(settings)
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["*"],  # a method a route does not answer is its 405, preflight or not
        allow_headers=REQUEST_HEADERS,
        allow_credentials=True,
        expose_headers=EXPOSED_HEADERS,
        max_age=PREFLIGHT_MAX_AGE_SECONDS,
    )
