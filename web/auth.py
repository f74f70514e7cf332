"""Who is calling: a bearer JWT (``sub`` = owner, roles claim), a host app's hook, or one local user.

The caller comes from the first of these that is configured:

- ``create_app(authenticate=...)``: the host app's own function from the connection to a
  :class:`User` or None (its sessions, its API keys); see :class:`HookAuthMiddleware`.
- ``auth == "jwt"`` with ``JOBSTREAM_JWKS_URL``: an identity provider's tokens, verified
  against its published keys (:mod:`web.jwks`).
- ``auth == "jwt"``: tokens signed with ``JOBSTREAM_JWT_SECRET`` (Litestar's :class:`JWTAuth`).
- ``auth == "none"``: every request is ``settings.local_user``, a plain user (not an admin):
  a single local user owns every job it creates, so it needs no rights over anyone else's,
  and a stray token-less request on a trusted network still cannot reach jobs that other,
  authenticated owners created in the same Redis.

Tokens are never logged. The SSE routes (route option ``STREAM_OPT``) also accept what an
``EventSource`` can send: ``?token=`` with a stream token, or the stream cookie (see
:mod:`web.live.stream_tokens`). The operator routes (:func:`operator_guard`) need an admin;
those with route option ``METRICS_OPT`` also take ``settings.metrics_token``, so Prometheus
needs no user JWT.

The app refuses to start with a secret too short for its algorithm, and a header must say
``Bearer`` (any case).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AuthenticationResult
from litestar.security.jwt import Token

from broker.settings import Settings
from web.live.stream_tokens import (
    STREAM_COOKIE,
    StreamClaims,
    StreamKind,
    StreamTokenError,
    StreamTokens,
    check_signing_key,
    is_stream_token,
    query_token,
)

EXCLUDE_KEY = "exclude_from_auth"
"""Route option (``opt={EXCLUDE_KEY: True}``) for routes anyone may call (health, docs)."""
METRICS_OPT = "metrics"
"""Route option (``opt={METRICS_OPT: True}``): the metrics token opens this operator route too."""
BEARER = "bearer"
MIN_METRICS_TOKEN_BYTES = 32

_MAX_SUB_LENGTH = 256


class User(msgspec.Struct, frozen=True):
    """The caller: ``id`` owns the jobs it creates; ``admin`` sees and cancels everyone's.

    ``operator`` may read the operator routes without being an admin: the one local user
    of the no-auth mode (a trusted network, where the operator is the user), and the
    holder of the metrics token on the metrics routes. ``service`` (a backend acting for
    its users) may create jobs for another owner and read or cancel any owner's jobs.
    """

    id: str
    roles: tuple[str, ...] = ()
    admin: bool = False
    operator: bool = False
    service: bool = False

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this caller may touch; None (everyone's) for an admin or a service."""
        return None if self.admin or self.service else self.id


@dataclass(frozen=True, slots=True)
class RoleNames:
    """Which roles make an admin or a service, and the claim (a dotted path) a JWT keeps them in."""

    admin: str = "admin"
    service: str = "service"
    claim: str = "roles"

    @classmethod
    def of(cls, settings: Settings) -> RoleNames:
        return cls(settings.admin_role, settings.service_role, settings.jwt_roles_claim)

    def roles_in(self, claims: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The roles ``claims`` carry at :attr:`claim` (none there: no roles); None when malformed."""
        value: Any = claims
        for part in self.claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(role, str) for role in value):
            return None
        return tuple(value)


def user_from_claims(sub: object, audience: Any, claims: Mapping[str, Any], names: RoleNames) -> User | None:
    """The user verified claims name, or None (401) when ``sub`` or the roles are malformed.

    A stream token is never a bearer token: it opens one stream, from the query or a cookie.
    """
    if is_stream_token(audience):
        return None
    roles = names.roles_in(claims)
    if roles is None or not isinstance(sub, str) or not sub or len(sub) > _MAX_SUB_LENGTH:
        return None
    return User(id=sub, roles=roles, admin=names.admin in roles, service=names.service in roles)


def user_from_token(token: Token, admin_role: str, service_role: str = "service") -> User | None:
    """The user a verified Litestar token names (its roles in the top-level ``roles`` claim)."""
    return user_from_claims(token.sub, token.aud, token.extras, RoleNames(admin_role, service_role))


METRICS_SCRAPER = User(id="metrics", operator=True)
"""Whoever presents the metrics token (on ``METRICS_OPT`` routes only)."""


def operator_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Route guard of the operator routes (queues, workers, metrics, stream stats): 403 unless
    the caller is an admin or an operator."""
    user = connection.user
    if not (isinstance(user, User) and (user.admin or user.operator)):
        raise PermissionDeniedException("operator routes need the admin role")


def bearer_credential(header: str) -> str:
    """The credential of an ``Authorization: Bearer <credential>`` header (scheme in any case,
    RFC 9110); 401 for another scheme (``Token``, ``Basic``) or none."""
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.casefold() != BEARER or not credential:
        raise NotAuthorizedException("the Authorization header must be `Bearer <token>`")
    return credential


def check_jwt_settings(settings: Settings) -> None:
    """Raise ``ValueError`` for a JWT configuration the web app must not start with."""
    if not settings.jwt_secret:
        raise ValueError(
            "JOBSTREAM_AUTH=jwt needs JOBSTREAM_JWT_SECRET (the HMAC key bearer tokens are "
            "signed with); set it, or set JOBSTREAM_AUTH=none for a trusted single-user setup"
        )
    check_signing_key(settings.jwt_secret, settings.jwt_algorithm)


def check_metrics_token(settings: Settings) -> None:
    """Raise ``ValueError`` for a metrics token too short to be a credential."""
    if settings.metrics_token is not None and len(settings.metrics_token.encode()) < MIN_METRICS_TOKEN_BYTES:
        raise ValueError(f"JOBSTREAM_METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_BYTES} bytes")


def make_token(
    settings: Settings, sub: str, roles: Iterable[str] = (), ttl: timedelta = timedelta(hours=1)
) -> str:
    """A signed bearer token for ``sub`` (tests, scripts, the README); ``roles`` is a top-level claim."""
    if not settings.jwt_secret:
        raise ValueError("JOBSTREAM_JWT_SECRET is not set; cannot sign a token")
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl, "roles": list(roles)}
    return jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithm)


Authenticate = Callable[[ASGIConnection[Any, Any, Any, Any]], "User | Awaitable[User | None] | None"]
"""A host app's own authentication (``create_app(authenticate=...)``): the caller, or None (401)."""


def stream_caller(
    connection: ASGIConnection[Any, Any, Any, Any], kind: StreamKind, tokens: StreamTokens
) -> AuthenticationResult:
    """The caller of an SSE route without other credentials: its stream token from ``?token=``
    (any parameter log redaction blanks), else the stream cookie; 401 if invalid or missing,
    403 if it is for another stream."""
    try:
        query = connection.scope["query_string"].decode("latin-1")
        token = query_token(query) or connection.cookies.get(STREAM_COOKIE)
        if not token:
            raise NotAuthorizedException("no credentials, stream token or stream cookie")
        claims: StreamClaims = tokens.verify(token)
    except StreamTokenError:
        raise NotAuthorizedException("invalid or expired stream token") from None
    if not claims.opens(kind, connection.path_params.get("job_id")):
        raise PermissionDeniedException("this stream token does not open this stream")
    return AuthenticationResult(user=User(id=claims.sub, admin=claims.admin), auth=claims)


def metrics_scraper(
    connection: ASGIConnection[Any, Any, Any, Any], metrics_token: bytes | None, header: str
) -> AuthenticationResult | None:
    """The metrics scraper, when ``header`` carries the metrics token on a ``METRICS_OPT`` route."""
    if metrics_token is None or not connection.route_handler.opt.get(METRICS_OPT):
        return None
    credential = bearer_credential(header)
    if hmac.compare_digest(credential.encode(), metrics_token):
        return AuthenticationResult(user=METRICS_SCRAPER, auth=None)
    return None
