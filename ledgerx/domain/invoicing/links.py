"""Signed, expiring links to documents (an invoice's or credit note's PDF, a wallet statement):
whoever holds the link reads that one document until it expires, without signing in, so it can
sit in a billing mailbox or be handed to an accountant. Anything else needs the project's access.

A link is `<public url><path>?expires=<unix seconds>&signature=<base64url HMAC-SHA256>` over the
path (query included, minus the signature) and the expiry. The secret is derived from the JWT
signing keys (auth/keys.derived_secrets): every configured key checks, so rotation does not
break links issued before it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from urllib.parse import urlencode

from ledgerx.domain.notifications.links import DEFAULT_PUBLIC_URL


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DocumentLinks:
    def __init__(self, secrets: tuple[bytes, ...], public_url: str | None, ttl_seconds: int) -> None:
        if not secrets:
            raise ValueError("document links need at least one secret")
        self._secrets = secrets
        self.base = (public_url or DEFAULT_PUBLIC_URL).rstrip("/")
        self.ttl = dt.timedelta(seconds=ttl_seconds)

    @staticmethod
    def _message(path: str, expires: int) -> bytes:
        return f"{path}\n{expires}".encode()

    def _signature(self, secret: bytes, path: str, expires: int) -> str:
        return _b64(hmac.new(secret, self._message(path, expires), hashlib.sha256).digest())

    def sign(self, path: str, now: dt.datetime, params: dict[str, str] | None = None) -> str:
        """An absolute URL to `path` (with `params`) that works until now + the link TTL."""
        full = f"{path}?{urlencode(params)}" if params else path
        expires = int((now + self.ttl).timestamp())
        sep = "&" if params else "?"
        return f"{self.base}{full}{sep}expires={expires}&signature={self._signature(self._secrets[0], full, expires)}"

    def check(
        self, path: str, params: dict[str, str], expires: str | None, signature: str | None, now: dt.datetime
    ) -> bool:
        """True when `signature` signs `path` with `params` and `expires`, and it has not expired."""
        if not expires or not signature or not expires.isdigit() or len(expires) > 12:
            return False
        if int(expires) <= now.timestamp():
            return False
        full = f"{path}?{urlencode(params)}" if params else path
        given = signature.encode("utf-8", "replace")  # compare_digest refuses non-ASCII str
        return any(
            hmac.compare_digest(self._signature(secret, full, int(expires)).encode(), given) for secret in self._secrets
        )
