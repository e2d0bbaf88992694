"""OpenID Connect authorization-code flow with PKCE, state and nonce (Google sign-in).

The provider is found through its discovery document under the configured issuer, so tests run
this same code against a small local provider. The id_token is verified against the provider's
JWKS: signature, issuer, audience, expiry and the nonce this server issued.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from redis.asyncio import Redis

from ledgerx.domain.errors import BadInput, Unauthenticated

STATE_TTL_SECONDS = 600
_DISCOVERY_TTL = 3600
# Google documents both spellings of its issuer.
_ISSUER_ALIASES = {"https://accounts.google.com": ("https://accounts.google.com", "accounts.google.com")}


@dataclasses.dataclass(frozen=True, slots=True)
class OidcIdentity:
    subject: str
    email: str
    email_verified: bool
    name: str


class OidcClient:
    def __init__(
        self,
        *,
        issuer: str,
        client_id: str | None,
        client_secret: str | None,
        http: httpx.AsyncClient,
        redis: Redis,
        prefix: str,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.http = http
        self.redis = redis
        self.prefix = prefix + "oidc:"
        self._discovery: tuple[float, dict[str, Any]] | None = None
        self._jwks: tuple[float, dict[str, Any]] | None = None

    def _require_configured(self) -> str:
        if not self.client_id or not self.client_secret:
            raise BadInput("Google sign-in is not configured on this server (GOOGLE_CLIENT_ID)", field="provider")
        return self.client_id

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            r = await self.http.get(url, timeout=10)
            r.raise_for_status()
            data = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise RuntimeError(f"identity provider request failed: {url}: {exc}") from exc
        if not isinstance(data, dict):
            raise RuntimeError(f"identity provider returned a non-object from {url}")
        return data

    async def discovery(self) -> dict[str, Any]:
        if self._discovery and self._discovery[0] > time.monotonic():
            return self._discovery[1]
        doc = await self._get_json(self.issuer + "/.well-known/openid-configuration")
        self._discovery = (time.monotonic() + _DISCOVERY_TTL, doc)
        return doc

    async def _jwks_doc(self, force: bool = False) -> dict[str, Any]:
        if not force and self._jwks and self._jwks[0] > time.monotonic():
            return self._jwks[1]
        doc = await self._get_json(str((await self.discovery())["jwks_uri"]))
        self._jwks = (time.monotonic() + _DISCOVERY_TTL, doc)
        return doc

    async def authorization_url(self, redirect_uri: str) -> tuple[str, str]:
        client_id = self._require_configured()
        _check_redirect(redirect_uri)
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        await self.redis.set(
            self.prefix + state,
            json.dumps({"nonce": nonce, "verifier": verifier, "redirect_uri": redirect_uri}),
            ex=STATE_TTL_SECONDS,
        )
        endpoint = str((await self.discovery())["authorization_endpoint"])
        query = urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email profile",
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "prompt": "select_account",
            }
        )
        return f"{endpoint}?{query}", state

    async def exchange(self, code: str, state: str, redirect_uri: str) -> OidcIdentity:
        client_id = self._require_configured()
        # GETDEL makes the state single-use even under concurrent callbacks.
        raw = await self.redis.getdel(self.prefix + state) if state else None
        if raw is None:
            raise Unauthenticated("unknown or expired sign-in state", reason="invalid_state")
        saved = json.loads(raw)
        if saved["redirect_uri"] != redirect_uri:
            raise Unauthenticated(
                "redirect URI does not match the one the sign-in started with", reason="invalid_state"
            )
        token_endpoint = str((await self.discovery())["token_endpoint"])
        try:
            r = await self.http.post(
                token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "client_id": client_id,
                    "client_secret": self.client_secret or "",
                    "code_verifier": saved["verifier"],
                },
                headers={"Accept": "application/json"},
                timeout=10,
            )
        except httpx.HTTPError as exc:
            raise RuntimeError(f"identity provider token request failed: {exc}") from exc
        if r.status_code != 200:
            raise Unauthenticated("the identity provider refused the authorization code", reason="invalid_grant")
        id_token = r.json().get("id_token")
        if not isinstance(id_token, str):
            raise Unauthenticated("the identity provider returned no id_token", reason="invalid_grant")
        claims = await self._verify_id_token(id_token, client_id)
        if not secrets.compare_digest(str(claims.get("nonce", "")), saved["nonce"]):
            raise Unauthenticated("id_token nonce does not match", reason="invalid_nonce")
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise Unauthenticated("the identity provider did not share an email address", reason="no_email")
        verified = claims.get("email_verified") in (True, "true")
        return OidcIdentity(str(claims["sub"]), email.strip().lower(), verified, str(claims.get("name") or ""))

    async def _verify_id_token(self, token: str, client_id: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed id_token", reason="invalid_id_token") from None
        kid = header.get("kid")
        key = _find_key(await self._jwks_doc(), kid)
        if key is None:  # the provider may have rotated: refetch once
            key = _find_key(await self._jwks_doc(force=True), kid)
        if key is None or header.get("alg") not in ("RS256", "ES256"):
            raise Unauthenticated("id_token signed with an unknown key", reason="invalid_id_token")
        issuers = _ISSUER_ALIASES.get(self.issuer, (self.issuer,))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                audience=client_id,
                issuer=issuers,
                leeway=60,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"id_token rejected: {exc}", reason="invalid_id_token") from None
        return claims


def _find_key(jwks: dict[str, Any], kid: object) -> jwt.PyJWK | None:
    for k in jwks.get("keys", []):
        if isinstance(k, dict) and k.get("kid") == kid:
            try:
                return jwt.PyJWK(k)
            except jwt.PyJWTError:
                return None
    return None


def _check_redirect(uri: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise BadInput("redirectUri must be an absolute http(s) URL without a fragment", field="redirectUri")
