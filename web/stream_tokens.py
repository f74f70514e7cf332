"""Short-lived stream tokens: what an ``EventSource`` can carry instead of a bearer token.

``EventSource`` cannot set headers, and a long-lived bearer token in a URL leaks into proxy
logs and browser history (RFC 9700). So the API mints, for a caller who already holds full
credentials, a JWT signed with the same secret but with its own audience
(``aud = "jobstream:stream"``), a lifetime of ``stream_token_ttl_seconds`` and a scope:
``job:<id>`` opens that job's stream only, ``owner`` opens the caller's feed and any of the
caller's job streams (the feed carries every one of those jobs anyway).

The audience keeps the two kinds apart in both directions: the bearer check refuses a
token with the stream audience (:func:`is_stream_token`), and the stream check demands it,
so a full bearer token in ``?token=`` is refused. A token is checked when a stream opens;
a stream that is already open is not cut when its token expires.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import jwt
import msgspec

from broker.models import Job

STREAM_AUDIENCE = "jobstream:stream"
OWNER_SCOPE = "owner"
STREAM_COOKIE = "jobstream_stream"
"""HttpOnly, SameSite=Strict cookie holding an ``owner`` stream token (see ``POST /events/stream-token``)."""

STREAM_OPT = "stream"
"""Route option naming what a route streams: ``"job"`` (path parameter ``job_id``) or ``"owner"``."""

StreamKind = Literal["job", "owner"]


class StreamTokenError(Exception):
    """The stream token is malformed, expired, not a stream token, or signed with another key."""


class StreamClaims(msgspec.Struct, frozen=True):
    """What a verified stream token says: who (an admin or not) may open what.

    ``admin`` is decided when the token is minted, from the bearer token's roles.
    """

    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    admin: bool
    scope: str

    def opens(self, kind: StreamKind, job_id: str | None) -> bool:
        """Whether this token opens the ``kind`` stream (of ``job_id`` for a job stream)."""
        return self.scope == OWNER_SCOPE or (kind == "job" and self.scope == job_scope(job_id or ""))


class StreamGrant(msgspec.Struct):
    """``POST /jobs/{id}/stream-token`` and ``POST /events/stream-token``: the token and its URL."""

    token: str
    expires_at: datetime
    url: str


class CreatedJob(Job, kw_only=True):
    """``POST /jobs`` answer: the job, plus a token that opens its event stream.

    ``stream_token`` is null in no-auth mode, where the streams need no token.
    """

    stream_token: str | None = None


class _Payload(msgspec.Struct):
    """A stream token's JWT claims as signed (``iat``/``exp`` in epoch seconds)."""

    sub: str
    admin: bool
    aud: str
    scope: str
    iat: int
    exp: int


_HMAC_DIGESTS = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_encode_json = msgspec.json.Encoder().encode


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def job_scope(job_id: str) -> str:
    """The scope of a token that opens one job's stream."""
    return f"job:{job_id}"


def is_stream_token(audience: str | Sequence[str] | None) -> bool:
    """Whether a token's ``aud`` claim marks it as a stream token (never a bearer token)."""
    if audience is None:
        return False
    return STREAM_AUDIENCE in ([audience] if isinstance(audience, str) else audience)


class StreamTokens:
    """Mints and verifies stream tokens with one key.

    ``secret`` is the bearer tokens' secret; in no-auth mode, which has none and checks no
    credentials anyway, :meth:`for_settings` uses a random per-process key so that the
    stream-token routes still answer in the usual shape (``POST /jobs`` mints none there).
    """

    def __init__(self, secret: str, algorithm: str, ttl_seconds: int) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self.ttl = timedelta(seconds=ttl_seconds)
        self._ttl_seconds = ttl_seconds
        digest = _HMAC_DIGESTS.get(algorithm)
        self._mac = hmac.new(secret.encode(), digestmod=digest) if digest else None
        header = _encode_json({"alg": algorithm, "typ": "JWT"})
        self._header = _b64url(header) + b"."

    @classmethod
    def for_settings(cls, secret: str | None, algorithm: str, ttl_seconds: int) -> StreamTokens:
        """The minter for an app: its JWT secret, or a random key when it has none (no-auth mode)."""
        return cls(secret or secrets.token_urlsafe(32), algorithm, ttl_seconds)

    def mint(self, sub: str, *, admin: bool, scope: str) -> tuple[str, datetime]:
        """A token for ``sub`` limited to ``scope``, and when it expires."""
        now = int(time.time())
        expires = now + self._ttl_seconds
        payload = _Payload(sub=sub, admin=admin, aud=STREAM_AUDIENCE, scope=scope, iat=now, exp=expires)
        return self._sign(payload), datetime.fromtimestamp(expires, UTC)

    def _sign(self, payload: _Payload) -> str:
        """The compact JWS (RFC 7515) of ``payload``.

        Every ``POST /jobs`` in JWT mode mints one, and PyJWT took about 80 us a token
        (JSON of dicts, re-preparing the key); for the HMAC algorithms the header and the
        keyed hash are prepared once here. Verification stays with PyJWT.
        """
        if self._mac is None:  # not an HMAC algorithm: PyJWT signs
            return jwt.encode(msgspec.structs.asdict(payload), self._secret, algorithm=self._algorithm)
        signing_input = self._header + _b64url(_encode_json(payload))
        mac = self._mac.copy()
        mac.update(signing_input)
        return (signing_input + b"." + _b64url(mac.digest())).decode()

    def verify(self, token: str) -> StreamClaims:
        """The claims of a valid stream token; :class:`StreamTokenError` for anything else.

        A bearer token (no stream audience) fails here, as does an expired one.
        """
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                audience=STREAM_AUDIENCE,
                options={"require": ["exp", "sub", "aud", "scope"]},
            )
            return msgspec.convert(
                {"sub": payload["sub"], "admin": payload.get("admin", False), "scope": payload["scope"]},
                StreamClaims,
            )
        except (jwt.InvalidTokenError, msgspec.ValidationError) as err:
            raise StreamTokenError(type(err).__name__) from None
