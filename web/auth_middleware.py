"""The authentication middleware of the web app, one per way of knowing the caller (see :mod:`web.auth`).

:func:`auth_hook` picks it at app creation: the host app's hook (:class:`HookAuthMiddleware`),
bearer JWTs with stream tokens on the SSE routes (:class:`BearerOrStreamMiddleware`, checked
with the shared secret or a JWKS), or the one local user (:class:`LocalUserMiddleware`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from litestar.config.app import AppConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult, DefineMiddleware
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from litestar.types import ASGIApp, Receive, Scope, Send

from broker.settings import Settings
from web.auth import (
    EXCLUDE_KEY,
    Authenticate,
    RoleNames,
    User,
    bearer_credential,
    check_jwt_settings,
    check_metrics_token,
    metrics_scraper,
    stream_caller,
    user_from_claims,
)
from web.jwks import JwksVerifier
from web.live.stream_tokens import STREAM_OPT, StreamTokens

_VERIFIED_TOKENS = 1024
"""How many verified bearer tokens a route's middleware remembers (all are forgotten when full)."""


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

    A bearer token is verified with the shared secret (Litestar's check) or, given a
    :class:`JwksVerifier`, against the identity provider's keys. On SSE routes without a
    header the stream token comes from ``?token=`` or the stream cookie (:func:`stream_caller`);
    a full bearer token in the query is not a stream token: 401. On ``METRICS_OPT`` routes
    the bearer credential may also be the metrics token.
    """

    def __init__(
        self,
        *args: Any,
        stream_tokens: StreamTokens,
        roles: RoleNames,
        jwks: JwksVerifier | None = None,
        metrics_token: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stream_tokens = stream_tokens
        self.roles = roles
        self.jwks = jwks
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
        if self.jwks is None:
            result = await super().authenticate_token(encoded_token, connection)
            expires = result.auth.exp.timestamp()
        else:
            result, expires = await self._jwks_user(encoded_token)
        if len(self._verified) >= _VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[encoded_token] = (expires, result)
        return result

    async def _jwks_user(self, encoded_token: str) -> tuple[AuthenticationResult, float]:
        assert self.jwks is not None
        claims = await self.jwks.claims(encoded_token)
        user = user_from_claims(claims.get("sub"), claims.get("aud"), claims, self.roles)
        if user is None:
            raise NotAuthorizedException("the token's sub or roles are malformed")
        return AuthenticationResult(user=user, auth=claims), float(claims["exp"])

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get(self.auth_header)
        if header:
            scraper = metrics_scraper(connection, self.metrics_token, header)
            if scraper is not None:
                return scraper
            return await self.authenticate_token(bearer_credential(header), connection)
        kind = connection.route_handler.opt.get(STREAM_OPT)
        if kind is None:
            raise NotAuthorizedException("no bearer token")
        return stream_caller(connection, kind, self.stream_tokens)


class HookAuthMiddleware(AbstractAuthenticationMiddleware):
    """``create_app(authenticate=...)``: the host app's function names the caller.

    It gets the connection (a Litestar ``ASGIConnection``: headers, cookies, the ASGI scope a
    host's session middleware filled) and returns a :class:`User` or None. On SSE routes a
    None falls back to a stream token or the stream cookie, as an ``EventSource`` on another
    origin cannot send the host's credentials; elsewhere None is a 401. The hook may raise
    Litestar's ``NotAuthorizedException`` or ``PermissionDeniedException`` itself. A sync hook
    runs on the event loop: a hook that does I/O should be ``async``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Authenticate,
        stream_tokens: StreamTokens,
        metrics_token: str | None,
        exclude: list[str],
    ) -> None:
        super().__init__(app, exclude=exclude, exclude_from_auth_key=EXCLUDE_KEY)
        self.authenticate = authenticate
        self.is_async = inspect.iscoroutinefunction(authenticate)
        self.stream_tokens = stream_tokens
        self.metrics_token = metrics_token.encode() if metrics_token else None

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if header and (scraper := metrics_scraper(connection, self.metrics_token, header)) is not None:
            return scraper
        found = self.authenticate(connection)
        user = await found if self.is_async or inspect.isawaitable(found) else found  # type: ignore[misc]
        if isinstance(user, User):
            return AuthenticationResult(user=user, auth=None)
        if user is not None:
            raise TypeError(f"authenticate= must return a web.User or None, not {type(user).__name__}")
        kind = connection.route_handler.opt.get(STREAM_OPT)
        if kind is None:
            raise NotAuthorizedException("not authenticated")
        return stream_caller(connection, kind, self.stream_tokens)


def auth_hook(
    settings: Settings,
    exclude: list[str],
    stream_tokens: StreamTokens,
    authenticate: Authenticate | None = None,
) -> Callable[[AppConfig], AppConfig]:
    """The ``on_app_init`` hook that installs the configured authentication.

    ``exclude`` are path patterns that need no credential (docs). Raises ``ValueError`` at
    app creation when JWT auth is configured without a secret, or with one too short for
    its algorithm, or JWKS auth without its issuer and audience.
    """
    if authenticate is not None or settings.auth == "none":
        middleware = (
            DefineMiddleware(
                HookAuthMiddleware,
                authenticate=authenticate,
                stream_tokens=stream_tokens,
                metrics_token=settings.metrics_token,
                exclude=exclude,
            )
            if authenticate is not None
            else DefineMiddleware(LocalUserMiddleware, user=User(id=settings.local_user, operator=True))
        )

        def install(config: AppConfig) -> AppConfig:
            config.middleware.append(middleware)
            return config

        return install
    jwks = JwksVerifier(settings) if settings.jwks_url else None
    if jwks is None:
        check_jwt_settings(settings)
    check_metrics_token(settings)
    return _jwt_auth(settings, exclude, stream_tokens, jwks).on_app_init


@dataclass
class _JWTAuthWithStreams(JWTAuth[User, Token]):
    """Litestar's JWT auth, handing :class:`BearerOrStreamMiddleware` what it needs besides."""

    middleware_kwargs: dict[str, Any] | None = None

    @property
    def middleware(self) -> DefineMiddleware:
        define = super().middleware
        define.kwargs.update(self.middleware_kwargs or {})
        return define


def _jwt_auth(
    settings: Settings, exclude: list[str], stream_tokens: StreamTokens, jwks: JwksVerifier | None
) -> JWTAuth[User, Token]:
    roles = RoleNames.of(settings)

    async def retrieve_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
        return user_from_claims(token.sub, token.aud, token.extras, roles)

    description = (
        "A JWT of the identity provider (JOBSTREAM_JWKS_URL): `sub` is the owner."
        if jwks
        else "A JWT signed with JOBSTREAM_JWT_SECRET: `sub` is the owner, `roles` a list."
    )
    return _JWTAuthWithStreams(
        retrieve_user_handler=retrieve_user,
        token_secret=settings.jwt_secret or "",
        algorithm=settings.jwt_algorithm,
        accepted_issuers=[settings.jwt_issuer] if settings.jwt_issuer else None,
        accepted_audiences=[settings.jwt_audience] if settings.jwt_audience else None,
        exclude=exclude,
        exclude_opt_key=EXCLUDE_KEY,
        authentication_middleware_class=BearerOrStreamMiddleware,
        middleware_kwargs={
            "metrics_token": settings.metrics_token,
            "stream_tokens": stream_tokens,
            "roles": roles,
            "jwks": jwks,
        },
        description=description,
    )
