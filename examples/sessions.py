"""The example apps' own auth, standing in for whatever an app already has: a few users
with passwords, and HMAC-signed session values (cookie or bearer) naming the user."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class Sessions:
    """Signs ``user.signature`` session values with the app's secret, and checks them."""

    secret: bytes
    passwords: dict[str, str]
    cookie: str = "session"

    @classmethod
    def from_env(cls) -> Sessions:
        """``APP_SESSION_SECRET`` (random per process when unset) and the two demo users."""
        secret = os.environ.get("APP_SESSION_SECRET") or secrets.token_urlsafe(32)
        return cls(secret.encode(), {"alice": "alice-password", "bob": "bob-password"})

    def check_password(self, user: str, password: str) -> bool:
        known = self.passwords.get(user)
        return known is not None and hmac.compare_digest(known.encode(), password.encode())

    def sign(self, user: str) -> str:
        return f"{user}.{self._mac(user)}"

    def user(self, value: str | None) -> str | None:
        """The user a session value names, or None if it is missing or forged."""
        if not value or "." not in value:
            return None
        user, _, mac = value.rpartition(".")
        return user if hmac.compare_digest(mac, self._mac(user)) else None

    def _mac(self, user: str) -> str:
        return hmac.new(self.secret, user.encode(), hashlib.sha256).hexdigest()
