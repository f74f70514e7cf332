"""Where completion webhooks may go: ``JOBSTREAM_WEBHOOK_ALLOWED_HOSTS``, and the URLs it allows.

A webhook is a request this server makes to a URL a caller chose, so the list is the only
thing that keeps it from being a relay into the operator's network. It names hosts
exactly, comma-separated, each one of:

- ``hooks.example.com``: ``https://hooks.example.com/...`` on the default port only;
- ``hooks.example.com:8443``: https on that port only;
- ``http://10.0.0.7:8080``: also plain http, to that host and port only (``http://name`` for
  the default port). Plain http is allowed for no host that is not written so.

A host is a DNS name or an IP address (IPv6 in brackets), compared as written, in lower
case: no wildcards, no suffixes, no user info (``https://allowed@elsewhere``) and no port
other than the one listed. The whole rule is one regular expression (:func:`url_pattern`),
used both to check a ``callback_url`` at create and again at each delivery, and in the
OpenAPI document, so what the schema allows is exactly what the server accepts.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

MAX_URL_LENGTH = 2048
_ENTRY = re.compile(
    r"(?:(?P<scheme>https?)://)?(?P<host>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::(?P<port>\d{1,5}))?/?"
)
_REST = r"(?:[/?#][^\x00-\x20\x7f]*)?"
"""After the host and port: a path, query or fragment, with no control character or space."""


class AllowedHost(NamedTuple):
    """One entry of the list: a host, its port (None: the scheme's default), and plain http."""

    host: str
    port: int | None
    plain_http: bool

    @property
    def pattern(self) -> str:
        """The regular expression of the URLs' start (scheme, host, port) this entry allows."""
        scheme = "https?" if self.plain_http else "https"
        host = self.host.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")
        return f"{scheme}://{host}" + ("" if self.port is None else f":{self.port}")


def parse_allowed_hosts(text: str) -> tuple[AllowedHost, ...]:
    """The entries of ``text`` (comma-separated); raises ValueError naming one it cannot read."""
    entries: list[AllowedHost] = []
    for raw in text.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        found = _ENTRY.fullmatch(entry)
        port = int(found["port"]) if found and found["port"] else None
        if found is None or (port is not None and not 0 < port < 65536):
            raise ValueError(
                f"webhook_allowed_hosts: {raw.strip()!r} is not a host, host:port or http://host[:port]"
            )
        entries.append(AllowedHost(found["host"], port, found["scheme"] == "http"))
    return tuple(entries)


@functools.cache
def url_pattern(allowed_hosts: str) -> re.Pattern[str] | None:
    """The callback URLs ``allowed_hosts`` allows, as one anchored pattern (None: no host listed)."""
    entries = parse_allowed_hosts(allowed_hosts)
    if not entries:
        return None
    starts = "|".join(entry.pattern for entry in entries)
    return re.compile(f"^(?:{starts}){_REST}$")


def url_refusal(url: str, allowed_hosts: str) -> str | None:
    """Why ``url`` may not receive webhooks under ``allowed_hosts``, or None when it may."""
    pattern = url_pattern(allowed_hosts)
    if pattern is None:
        return "completion webhooks are off on this server (JOBSTREAM_WEBHOOK_ALLOWED_HOSTS is empty)"
    if len(url) > MAX_URL_LENGTH:
        return f"a callback_url is at most {MAX_URL_LENGTH} characters"
    if pattern.fullmatch(url) is None:
        return (
            "callback_url must be an https URL (http only where the list says so) to a host and port "
            "listed in JOBSTREAM_WEBHOOK_ALLOWED_HOSTS, with no user info"
        )
    return None


def url_schema(allowed_hosts: str) -> dict[str, Any]:
    """The JSON Schema of ``callback_url`` in ``POST /jobs`` under ``allowed_hosts``."""
    pattern = url_pattern(allowed_hosts)
    if pattern is None:
        return {
            "type": "null",
            "description": "completion webhooks are off on this server (JOBSTREAM_WEBHOOK_ALLOWED_HOSTS)",
        }
    return {
        "type": ["string", "null"],
        "maxLength": MAX_URL_LENGTH,
        "pattern": pattern.pattern,
        "description": "POSTed a signed Standard Webhooks event once the job ends; only the hosts "
        "this server allows (JOBSTREAM_WEBHOOK_ALLOWED_HOSTS)",
    }
