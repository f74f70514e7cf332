"""Short-lived stream tokens: what an ``EventSource`` can carry instead of a bearer token.

``EventSource`` cannot set headers, and a long-lived bearer token in a URL leaks into proxy
logs and browser history (RFC 9700). So the API mints, for a caller who already holds full
credentials, a JWT signed with the stream-token key (``JOBSTREAM_STREAM_TOKEN_SECRET``, else
the bearer tokens' shared secret, see :meth:`StreamTokens.for_settings`) with its own audience
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
import logging
import re
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import unquote_plus

import jwt
import msgspec

from broker.models import Job
from broker.settings import Settings

logger = logging.getLogger(__name__)

STREAM_AUDIENCE = "jobstream:stream"
OWNER_SCOPE = "owner"
STREAM_COOKIE = "jobstream_stream"
"""HttpOnly, SameSite=Strict cookie holding an ``owner`` stream token (see ``POST /events/stream-token``)."""

TOKEN_PARAMS = frozenset({"token", "access_token"})
"""Query parameter names (decoded, case-folded) that carry a token: the stream-token reader
takes its token from one of these, and log redaction blanks every one of them."""

STREAM_OPT = "stream"
"""Route option naming what a route streams: ``"job"`` (path parameter ``job_id``) or ``"owner"``."""

StreamKind = Literal["job", "owner"]


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


HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
"""The algorithms a shared secret can sign both kinds of token with, and the shortest key
each needs (RFC 7518 section 3.2: a key at least as long as the hash output)."""

_HMAC_DIGESTS = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_encode_json = msgspec.json.Encoder().encode
_QUERY_SEPARATORS = re.compile(r"([&;])")


class StreamTokenError(Exception):
    """The stream token is malformed, expired, not a stream token, or signed with another key."""


def check_signing_key(secret: str, algorithm: str, name: str = "JOBSTREAM_JWT_SECRET") -> None:
    """Raise ``ValueError`` unless ``secret`` (the setting ``name``) is long enough to sign with
    ``algorithm`` (HMAC only)."""
    need = HMAC_KEY_BYTES.get(algorithm)
    if need is None:
        raise ValueError(
            f"JOBSTREAM_JWT_ALGORITHM={algorithm!r} is not supported: stream tokens are signed with a "
            f"shared secret, so it must be one of {', '.join(HMAC_KEY_BYTES)}"
        )
    if len(secret.encode()) < need:
        raise ValueError(
            f"{name} is {len(secret.encode())} bytes; {algorithm} needs at least {need} "
            "(use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(64))'`)"
        )


def is_token_param(name: str) -> bool:
    """Whether a query parameter, named as sent (``%74oken`` too), carries a token."""
    return unquote_plus(name).casefold() in TOKEN_PARAMS


def split_query(query: str) -> list[str]:
    """A raw query string cut at ``&`` and ``;``: ``name=value`` parts at even indexes, the
    separators between them at odd ones (so ``"".join`` gives the query back)."""
    return _QUERY_SEPARATORS.split(query)


def query_pairs(query: str) -> list[tuple[str, str]]:
    """``(name, value)`` of each ``name=value`` part of a raw query string, not decoded."""
    return [(name, value) for name, eq, value in (p.partition("=") for p in split_query(query)[::2]) if eq]


def query_token(query: str) -> str | None:
    """The one token a query string carries (None if none); two or more are ambiguous.

    Reads exactly the parameters that log redaction blanks (:func:`is_token_param`).
    """
    tokens = [unquote_plus(value) for name, value in query_pairs(query) if is_token_param(name)]
    if len(tokens) > 1:
        raise StreamTokenError("more than one token parameter")
    return tokens[0] if tokens else None


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

    The key is a shared secret of the web processes (see :meth:`for_settings`); in no-auth
    mode, which checks no credentials, a random key keeps the stream-token routes answering
    in the usual shape (``POST /jobs`` mints none there).
    """

    def __init__(self, secret: str, algorithm: str, ttl_seconds: int) -> None:
        check_signing_key(secret, algorithm)
        self._secret = secret
        self._algorithm = algorithm
        self.ttl = timedelta(seconds=ttl_seconds)
        self._ttl_seconds = ttl_seconds
        self._mac = hmac.new(secret.encode(), digestmod=_HMAC_DIGESTS[algorithm])
        header = _encode_json({"alg": algorithm, "typ": "JWT"})
        self._header = _b64url(header) + b"."

    @classmethod
    def for_settings(cls, settings: Settings, *, credentials_checked: bool) -> StreamTokens:
        """The minter of an app: its key is ``JOBSTREAM_STREAM_TOKEN_SECRET``, else the JWT secret,
        else a random per-process key.

        The random key is right for one process; behind a load balancer a token minted by one
        web process would be refused by the next, so it is logged as a warning whenever the
        app checks credentials (JWKS or ``authenticate=`` without a stream-token secret). In
        no-auth mode no stream needs a token, and nothing is logged.
        """
        algorithm, ttl = settings.jwt_algorithm, settings.stream_token_ttl_seconds
        if settings.stream_token_secret:
            check_signing_key(settings.stream_token_secret, algorithm, "JOBSTREAM_STREAM_TOKEN_SECRET")
            return cls(settings.stream_token_secret, algorithm, ttl)
        if settings.jwt_secret:
            return cls(settings.jwt_secret, algorithm, ttl)
        if credentials_checked:
            logger.warning(
                "stream tokens are signed with a random key of this process: set "
                "JOBSTREAM_STREAM_TOKEN_SECRET (32+ bytes, the same in every web process) when "
                "more than one web process serves the API"
            )
        return cls(secrets.token_urlsafe(64), algorithm, ttl)

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
