"""Who is calling: a bearer JWT (``sub`` = owner, ``roles`` claim), or one local user.

``auth == "jwt"`` uses Litestar's :class:`JWTAuth`; ``auth == "none"`` makes every request
``settings.local_user``, a plain user (not an admin): a single local user owns every job
it creates, so it needs no rights over anyone else's, and a stray token-less request on a
trusted network still cannot reach jobs that other, authenticated owners created in the
same Redis. Tokens are never logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import msgspec
from litestar.config.app import AppConfig
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult, DefineMiddleware
from litestar.security.jwt import JWTAuth, Token
from litestar.types import ASGIApp

from broker.settings import Settings

EXCLUDE_KEY = "exclude_from_auth"
"""Route option (``opt={EXCLUDE_KEY: True}``) for routes anyone may call (health, docs)."""

_MAX_SUB_LENGTH = 256


class User(msgspec.Struct, frozen=True):
    """The caller: ``id`` owns the jobs it creates; ``admin`` sees and cancels everyone's."""

    id: str
    roles: tuple[str, ...] = ()
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this caller may touch; None (everyone's) for an admin."""
        return None if self.admin else self.id


def user_from_token(token: Token, admin_role: str) -> User | None:
    """The user a verified token names, or None (401) when ``sub`` or ``roles`` is malformed."""
    roles = token.extras.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        return None
    if not token.sub or len(token.sub) > _MAX_SUB_LENGTH:
        return None
    return User(id=token.sub, roles=tuple(roles), admin=admin_role in roles)


def make_token(
    settings: Settings, sub: str, roles: Iterable[str] = (), ttl: timedelta = timedelta(hours=1)
) -> str:
    """A signed bearer token for ``sub`` (tests, scripts, the README); ``roles`` is a top-level claim."""
    if not settings.jwt_secret:
        raise ValueError("JOBSTREAM_JWT_SECRET is not set; cannot sign a token")
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl, "roles": list(roles)}
    return jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithm)


class LocalUserMiddleware(AbstractAuthenticationMiddleware):
    """``auth == "none"``: every request is the one local user."""

    def __init__(self, app: ASGIApp, user: User) -> None:
        super().__init__(app, exclude_from_auth_key=EXCLUDE_KEY)
        self.user = user

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        return AuthenticationResult(user=self.user, auth=None)


def auth_hook(settings: Settings, exclude: list[str]) -> Callable[[AppConfig], AppConfig]:
    """The ``on_app_init`` hook that installs the configured authentication.

    ``exclude`` are path patterns that need no token (docs). Raises ``ValueError`` at app
    creation when JWT auth is configured without a secret.
    """
    if settings.auth == "none":
        local = User(id=settings.local_user)

        def install_local(config: AppConfig) -> AppConfig:
            config.middleware.append(DefineMiddleware(LocalUserMiddleware, user=local))
            return config

        return install_local
    if not settings.jwt_secret:
        raise ValueError(
            "JOBSTREAM_AUTH=jwt needs JOBSTREAM_JWT_SECRET (the HMAC key bearer tokens are "
            "signed with); set it, or set JOBSTREAM_AUTH=none for a trusted single-user setup"
        )
    return _jwt_auth(settings, exclude).on_app_init


def _jwt_auth(settings: Settings, exclude: list[str]) -> JWTAuth[User, Token]:
    admin_role = settings.admin_role

    async def retrieve_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
        return user_from_token(token, admin_role)

    return JWTAuth[User, Token](
        retrieve_user_handler=retrieve_user,
        token_secret=settings.jwt_secret or "",
        algorithm=settings.jwt_algorithm,
        exclude=exclude,
        exclude_opt_key=EXCLUDE_KEY,
        description="A JWT signed with JOBSTREAM_JWT_SECRET: `sub` is the owner, `roles` a list.",
    )
