"""Standard Webhooks signing: the secret's format and the three headers every delivery carries.

The spec (https://www.standardwebhooks.com): ``webhook-id`` names the message (the same on
every retry of it), ``webhook-timestamp`` is the attempt's time in epoch seconds, and
``webhook-signature`` is ``v1,`` + base64 of HMAC-SHA256 over ``"<id>.<timestamp>.<body>"``,
keyed with the bytes of the secret after its ``whsec_`` prefix (base64). A receiver verifies
with any Standard Webhooks library, or these few lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
"""The spec's bounds on the key (what ``whsec_`` + base64 of 24 to 64 random bytes gives)."""


class BadWebhookSecret(ValueError):
    """``JOBSTREAM_WEBHOOK_SECRET`` is not ``whsec_`` followed by base64 of 24 to 64 bytes."""


def decode_secret(secret: str) -> bytes:
    """The signing key in ``secret`` (``whsec_<base64>``); raises :class:`BadWebhookSecret`."""
    if not secret.startswith(SECRET_PREFIX):
        raise BadWebhookSecret(f"the webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as err:
        raise BadWebhookSecret(f"the webhook secret after {SECRET_PREFIX!r} is not base64 ({err})") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise BadWebhookSecret(
            f"the webhook secret must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``: the ``webhook-signature`` value."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()


def webhook_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt of ``body`` (JSON) at ``timestamp`` (epoch seconds)."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
    }
