"""Who is calling: a bearer JWT (``sub`` = owner, ``roles`` claim), or one local user.

``auth == "jwt"`` uses Litestar's :class:`JWTAuth`; ``auth == "none"`` makes every request
``settings.local_user``, a plain user (not an admin): a single local user owns every job
it creates, so it needs no rights over anyone else's, and a stray token-less request on a
trusted network still cannot reach jobs that other, authenticated owners created in the
same Redis. Tokens are never logged.

The SSE routes (route option ``STREAM_OPT``) also accept what an ``EventSource`` can send:
``?token=`` with a stream token, or the stream cookie (see :mod:`web.live.stream_tokens`). The
operator routes (:func:`operator_guard`) need an admin; those with route option
``METRICS_OPT`` also take ``settings.metrics_token``, so Prometheus needs no user JWT.

The app refuses to start with a secret too short for its algorithm (HMAC only: stream
tokens are signed with the same secret), and a header must say ``Bearer`` (any case).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import msgspec
from litestar.config.app import AppConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AuthenticationResult, DefineMiddleware
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from litestar.types import ASGIApp, Receive, Scope, Send

from broker.settings import Settings
from web.live.stream_tokens import (
    STREAM_COOKIE,
    STREAM_OPT,
    StreamClaims,
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
_VERIFIED_TOKENS = 1024
"""How many verified bearer tokens a route's middleware remembers (all are forgotten when full)."""


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


def user_from_token(token: Token, admin_role: str, service_role: str = "service") -> User | None:
    """The user a verified token names, or None (401) when ``sub`` or ``roles`` is malformed.

    A stream token is never a bearer token: it opens one stream, from the query or a cookie.
    """
    if is_stream_token(token.aud):
        return None
    roles = token.extras.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        return None
    if not token.sub or len(token.sub) > _MAX_SUB_LENGTH:
        return None
    return User(id=token.sub, roles=tuple(roles), admin=admin_role in roles, service=service_role in roles)


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


class LocalUserMiddleware:
    """``auth == "none"``: every request is the one local user.

    It only sets the scope's user, as an authentication middleware would; Litestar's base
    class would first match the path against the exclusions and build a connection
    object, for an answer that is always the same.
    """

    def __init__(self, app: ASGIApp, user: User) -> None:
        self.app = app
        self.user = user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["user"] = self.user
        scope["auth"] = None
        await self.app(scope, receive, send)


class BearerOrStreamMiddleware(JWTAuthenticationMiddleware):
    """Bearer JWTs everywhere; on SSE routes, without an ``Authorization`` header, a stream token.

    The stream token comes from ``?token=`` or, failing that, the stream cookie; either must
    be a valid stream token whose scope opens the requested stream (401 if invalid, 403 if
    it is for another stream). A full bearer token in the query is not a stream token: 401.
    On ``METRICS_OPT`` routes the bearer credential may also be the metrics token.
    """

    def __init__(self, *args: Any, metrics_token: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_tokens = StreamTokens(self.token_secret, self.algorithm, ttl_seconds=0)
        self.metrics_token = metrics_token.encode() if metrics_token else None
        self._verified: dict[str, tuple[float, AuthenticationResult]] = {}

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        """A bearer token's user, verified once and then remembered until the token expires.

        A client sends the same bearer token with every request, and verifying it (PyJWT:
        base64, JSON, HMAC, claims) was a sixth of a ``POST /jobs`` in JWT mode. The user
        depends on the token alone, so a verified token string maps to the same answer
        until its ``exp``; anything that fails verification is never remembered.
        """
        known = self._verified.get(encoded_token)
        if known is not None and known[0] > time.time():
            return known[1]
        result = await super().authenticate_token(encoded_token, connection)
        if len(self._verified) >= _VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[encoded_token] = (result.auth.exp.timestamp(), result)
        return result

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        opt = connection.route_handler.opt
        kind = opt.get(STREAM_OPT)
        header = connection.headers.get(self.auth_header)
        if header:
            credential = bearer_credential(header)
            if self.metrics_token is not None and opt.get(METRICS_OPT) and self._is_metrics_token(credential):
                return AuthenticationResult(user=METRICS_SCRAPER, auth=None)
            return await self.authenticate_token(credential, connection)
        if kind is None:
            raise NotAuthorizedException("no bearer token")
        claims = self._stream_claims(connection)
        if not claims.opens(kind, connection.path_params.get("job_id")):
            raise PermissionDeniedException("this stream token does not open this stream")
        return AuthenticationResult(user=User(id=claims.sub, admin=claims.admin), auth=claims)

    def _is_metrics_token(self, credential: str) -> bool:
        assert self.metrics_token is not None
        return hmac.compare_digest(credential.encode(), self.metrics_token)

    def _stream_claims(self, connection: ASGIConnection[Any, Any, Any, Any]) -> StreamClaims:
        """The stream token of ``?token=`` (any parameter log redaction blanks), else the cookie."""
        try:
            query = connection.scope["query_string"].decode("latin-1")
            token = query_token(query) or connection.cookies.get(STREAM_COOKIE)
            if not token:
                raise NotAuthorizedException("no bearer token, stream token or stream cookie")
            return self.stream_tokens.verify(token)
        except StreamTokenError:
            raise NotAuthorizedException("invalid or expired stream token") from None


def auth_hook(settings: Settings, exclude: list[str]) -> Callable[[AppConfig], AppConfig]:
    """The ``on_app_init`` hook that installs the configured authentication.

    ``exclude`` are path patterns that need no token (docs). Raises ``ValueError`` at app
    creation when JWT auth is configured without a secret, or with one too short for its
    algorithm, or with an algorithm stream tokens cannot be signed with.
    """
    if settings.auth == "none":
        local = User(id=settings.local_user, operator=True)

        def install_local(config: AppConfig) -> AppConfig:
            config.middleware.append(DefineMiddleware(LocalUserMiddleware, user=local))
            return config

        return install_local
    check_jwt_settings(settings)
    return _jwt_auth(settings, exclude).on_app_init


@dataclass
class _JWTAuthWithMetricsToken(JWTAuth[User, Token]):
    """Litestar's JWT auth, handing the metrics token to :class:`BearerOrStreamMiddleware` too."""

    metrics_token: str | None = None

    @property
    def middleware(self) -> DefineMiddleware:
        define = super().middleware
        define.kwargs["metrics_token"] = self.metrics_token
        return define


def _jwt_auth(settings: Settings, exclude: list[str]) -> JWTAuth[User, Token]:
    admin_role, service_role = settings.admin_role, settings.service_role

    async def retrieve_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
        return user_from_token(token, admin_role, service_role)

    return _JWTAuthWithMetricsToken(
        retrieve_user_handler=retrieve_user,
        token_secret=settings.jwt_secret or "",
        algorithm=settings.jwt_algorithm,
        exclude=exclude,
        exclude_opt_key=EXCLUDE_KEY,
        authentication_middleware_class=BearerOrStreamMiddleware,
        metrics_token=settings.metrics_token,
        description="A JWT signed with JOBSTREAM_JWT_SECRET: `sub` is the owner, `roles` a list.",
    )
