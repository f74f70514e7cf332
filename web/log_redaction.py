"""Keep tokens out of the logs: the access log writes each request's query string.

uvicorn logs ``"GET /jobs/<id>/events?token=<jwt> HTTP/1.1" 200`` at INFO on the
``uvicorn.access`` logger; a stream token there could be replayed by whoever reads the logs
until it expires. :class:`RedactTokens` rewrites ``token=<value>`` (and ``access_token``)
in a record's message and arguments before any handler formats it.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGERS = ("uvicorn.access", "uvicorn.error", "gunicorn.access", "hypercorn.access")
"""Loggers that may write a request target; the filter goes on each of them."""

_TOKEN_IN_QUERY = re.compile(r"([?&;](?:access_)?token=)[^&;#\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``/x?token=abc&a=1`` -> ``/x?token=[redacted]&a=1``."""
    return _TOKEN_IN_QUERY.sub(rf"\g<1>{REDACTED}", text)


class RedactTokens(logging.Filter):
    """A logger filter that redacts query-string tokens in the message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install_log_redaction(names: tuple[str, ...] = ACCESS_LOGGERS) -> None:
    """Put one :class:`RedactTokens` on each named logger (idempotent).

    The ASGI server configures its loggers before it imports the app, so a filter added
    while the app is built stays in place.
    """
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
