"""Keep tokens out of the logs: the access log writes each request's query string.

uvicorn logs ``"GET /jobs/<id>/events?token=<jwt> HTTP/1.1" 200`` at INFO on the
``uvicorn.access`` logger; a stream token there could be replayed by whoever reads the logs
until it expires. :class:`RedactTokens` blanks the value of every query parameter whose
name, once percent-decoded and case-folded, names a token (``token``, ``%74oken``,
``TOKEN``, ``access%5Ftoken``...) in a record's message and arguments before any handler
formats it. The test of a name is :func:`web.live.stream_tokens.is_token_param`, the one the
stream-token reader uses, so whatever could open a stream is what never reaches a log.
"""

from __future__ import annotations

import logging
import re

from web.live.stream_tokens import is_token_param, split_query

ACCESS_LOGGERS = ("uvicorn.access", "uvicorn.error", "gunicorn.access", "hypercorn.access")
"""Loggers that may write a request target; the filter goes on each of them."""

_QUERY = re.compile(r"\?([^\s#]*)")
REDACTED = "[redacted]"


def redact_query(query: str) -> str:
    """``a=1&%74oken=abc`` -> ``a=1&%74oken=[redacted]`` (separators and names kept as sent)."""
    if "=" not in query:
        return query
    parts = split_query(query)
    for index in range(0, len(parts), 2):
        name, equals, _ = parts[index].partition("=")
        if equals and is_token_param(name):
            parts[index] = f"{name}={REDACTED}"
    return "".join(parts)


def redact(text: str) -> str:
    """``/x?token=abc&a=1`` -> ``/x?token=[redacted]&a=1``, for every query string in ``text``."""
    if "?" not in text:
        return text
    return _QUERY.sub(lambda match: "?" + redact_query(match.group(1)), text)


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
