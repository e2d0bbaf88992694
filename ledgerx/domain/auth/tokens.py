"""Short-lived JWT access tokens: signed with the key ring, every registered claim checked."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import jwt

from ledgerx.domain.auth.keys import KeyRing
from ledgerx.domain.errors import Unauthenticated

if TYPE_CHECKING:
    from ledgerx.domain.auth.sessions import Revocations

LEEWAY_SECONDS = 30
_CACHE_SIZE = 10_000


class AccessTokens:
    def __init__(self, ring: KeyRing, *, issuer: str, audience: str, ttl: int) -> None:
        self.ring = ring
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._verified: dict[str, dict[str, Any]] = {}
        # Sessions revoked before their tokens expire (log-out, refresh-token reuse); set by
        # Services once Redis and the event bus exist. A signature says nothing about revocation:
        # the gateway and open websockets consult this for the token's `sid`.
        self.revocations: Revocations | None = None

    @property
    def max_lifetime(self) -> int:
        """The longest a token verifies: its TTL plus the leeway allowed on `exp`."""
        return self.ttl + LEEWAY_SECONDS

    def issue(self, subject: str, *, session_id: str | None = None, now: float | None = None) -> str:
        t = int(now if now is not None else time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": t,
            "nbf": t,
            "exp": t + self.ttl,
            "jti": uuid.uuid4().hex,
        }
        if session_id:
            claims["sid"] = session_id
        key = self.ring.signing
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid})

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims, or raise UNAUTHENTICATED without saying which check failed.

        A token whose signature already verified is remembered until it expires (a client sends
        the same token on every request, and the signature check is most of the cost); expiry
        is still checked on every use.
        """
        hit = self._verified.get(token)
        if hit is not None:
            if hit["exp"] + LEEWAY_SECONDS >= time.time():
                return hit
            self._verified.pop(token, None)
        claims = self._verify(token)
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("invalid access token") from None
        key = self.ring.by_kid.get(str(header.get("kid")))
        # The algorithm comes from our key, never from the token: `alg: none` or an HMAC
        # signed with the public key cannot pass.
        if key is None or header.get("alg") != key.alg:
            raise Unauthenticated("invalid access token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired", reason="expired") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid access token") from None
        if not _registered_types_ok(claims):
            raise Unauthenticated("invalid access token")
        return claims


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _registered_types_ok(claims: dict[str, Any]) -> bool:
    """RFC 7519's registered claims with the types it gives them.

    PyJWT compares `int(claims["exp"])`, so `"exp": "99999999999"` (a string) or `true` passed;
    whatever reads the claims later (a cache keyed on `exp`, a stream's expiry timer) would then
    trust a value of the wrong type. Our tokens always carry integers and strings.
    """
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _is_int(claims[name]):
            return False
    aud = claims.get("aud")
    if not (isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))):
        return False
    # `sid` (the session, checked against revocations) is ours, and a string when present.
    return all(isinstance(claims.get(name), str) for name in ("iss", "sub", "jti")) and isinstance(
        claims.get("sid", ""), str
    )
