"""Bearer JWTs of an identity provider, verified against its JWKS (``JOBSTREAM_JWKS_URL``).

Auth0, Keycloak, Cognito, Entra ID... sign their tokens with a private key and publish the
public keys as a JSON Web Key Set. PyJWT's :class:`~jwt.PyJWKClient` fetches that set (with
blocking ``urllib``), caches it for five minutes and refreshes it once when a token names an
unknown ``kid`` (at most every 30 s, so a flood of made-up ``kid`` values cannot flood the
provider). Its calls run in a worker thread; this module keeps the keys it got in a dict, so
a known key costs the event loop a dict lookup, and each verified token is remembered by the
auth middleware until it expires anyway.

A token is accepted when its signature verifies with the key its ``kid`` (required) names, using that
key's own algorithm (the JWK's ``alg``, else its type's default), which must be asymmetric:
the header can never pick HMAC with a public key as the secret. ``iss`` must equal
``JOBSTREAM_JWT_ISSUER`` and ``aud`` contain ``JOBSTREAM_JWT_AUDIENCE``; both settings are
required in this mode, since one provider signs tokens for many apps (and, multi-tenant,
for many issuers) with the same keys. ``exp`` and ``sub`` are required too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKClientConnectionError, PyJWKClientError
from litestar.exceptions import NotAuthorizedException

from broker.settings import Settings
from web.problems import ProblemError, problem

logger = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
)
"""What a JWKS key may verify with (HMAC keys in a JWKS are refused)."""

KEYS_MAX_AGE_SECONDS = 300.0
"""How long a key found in the set is used before the set is asked again (PyJWKClient's own
cache lifespan): a key the provider withdrew stops working within this long."""
FETCH_TIMEOUT_SECONDS = 5.0
JWKS_RETRY_AFTER_SECONDS = 5


def check_jwks_settings(settings: Settings) -> None:
    """Raise ``ValueError`` for a JWKS configuration the web app must not start with."""
    required = {"JOBSTREAM_JWT_ISSUER": settings.jwt_issuer, "JOBSTREAM_JWT_AUDIENCE": settings.jwt_audience}
    missing = [name for name, value in required.items() if not value]
    if missing:
        raise ValueError(
            f"JOBSTREAM_JWKS_URL needs {' and '.join(missing)}: a provider's keys sign tokens for "
            "other apps and tenants too, so the issuer and audience decide which tokens are for this API"
        )
    if not settings.jwks_url or not settings.jwks_url.startswith(("https://", "http://")):
        raise ValueError("JOBSTREAM_JWKS_URL must be an https:// (or http://) URL")


class JwksKeys:
    """The provider's public keys by ``kid``: a dict on the event loop, PyJWKClient in a thread."""

    def __init__(self, url: str) -> None:
        self._client = PyJWKClient(url, lifespan=KEYS_MAX_AGE_SECONDS, timeout=FETCH_TIMEOUT_SECONDS)
        self._keys: dict[str, tuple[float, PyJWK]] = {}
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> PyJWK | None:
        """The key ``kid`` names, or None when the provider has none by that name.

        Raises a 503 problem when the set cannot be fetched and the key is not known from
        before (a known key outlives a provider outage: stale beats refusing every user).
        """
        known = self._keys.get(kid)
        if known is not None and time.monotonic() - known[0] < KEYS_MAX_AGE_SECONDS:
            return known[1]
        async with self._lock:  # one lookup in flight: misses are rare, a burst of them waits here
            return await self._look_up(kid)

    async def _look_up(self, kid: str) -> PyJWK | None:
        known = self._keys.get(kid)
        if known is not None and time.monotonic() - known[0] < KEYS_MAX_AGE_SECONDS:
            return known[1]
        try:
            key = await asyncio.to_thread(self._client.get_signing_key, kid)
        except PyJWKClientConnectionError as err:
            if known is not None:
                return known[1]
            logger.warning("JWKS unavailable: %s", err)
            detail = "the identity provider's keys cannot be fetched right now; retry after a moment"
            headers = {"Retry-After": str(JWKS_RETRY_AFTER_SECONDS)}
            raise ProblemError(problem(503, "jwks-unavailable", detail), headers) from None
        except PyJWKClientError:
            self._keys.pop(kid, None)
            return None
        self._keys[kid] = (time.monotonic(), key)
        return key


class JwksVerifier:
    """Verifies a bearer JWT against the JWKS, issuer and audience of ``settings``."""

    def __init__(self, settings: Settings) -> None:
        check_jwks_settings(settings)
        assert settings.jwks_url is not None
        self.keys = JwksKeys(settings.jwks_url)
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience

    async def claims(self, encoded: str) -> Mapping[str, Any]:
        """The verified claims of ``encoded``; 401 for anything that does not verify."""
        try:
            kid = jwt.get_unverified_header(encoded).get("kid")
        except jwt.InvalidTokenError:
            raise NotAuthorizedException("invalid token") from None
        if not isinstance(kid, str):
            raise NotAuthorizedException("the token names no signing key (kid)")
        key = await self.keys.key(kid)
        if key is None:
            raise NotAuthorizedException("the token's signing key is not in the identity provider's set")
        if key.algorithm_name not in ASYMMETRIC_ALGORITHMS:
            raise NotAuthorizedException("the signing key is not an asymmetric key")
        try:
            claims: dict[str, Any] = jwt.decode(
                encoded,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.InvalidTokenError:
            raise NotAuthorizedException("invalid token") from None
        return claims
