"""A small OpenID Connect provider for tests: discovery, authorize, token (PKCE) and JWKS.

It runs on a real socket so the production OIDC client talks HTTP to it exactly as to Google.
Knobs let a test make it misbehave (wrong nonce, wrong audience, unverified email).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route


@dataclasses.dataclass
class Account:
    sub: str
    email: str
    email_verified: bool = True
    name: str = "Google User"


@dataclasses.dataclass
class Knobs:
    nonce_override: str | None = None
    audience_override: str | None = None
    issuer_override: str | None = None
    expired: bool = False


class FakeOidc:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.issuer = ""  # set once the server knows its port
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key-1"
        self.account = Account(sub=secrets.token_hex(8), email="someone@example.com")
        self.knobs = Knobs()
        self.codes: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/jwks", self.jwks),
            ]
        )

    async def discovery(self, _: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.issuer + "/jwks",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != self.client_id or q.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": q["redirect_uri"],
            "nonce": q.get("nonce"),
            "challenge": q["code_challenge"],
            "account": dataclasses.replace(self.account),
        }
        return RedirectResponse(
            q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]}), status_code=302
        )

    async def token(self, request: Request) -> Response:
        form = dict(await request.form())
        self.token_requests.append({k: str(v) for k, v in form.items()})
        grant = self.codes.pop(str(form.get("code")), None)
        if grant is None or form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != grant["challenge"] or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        acct: Account = grant["account"]
        now = int(time.time()) - (7200 if self.knobs.expired else 0)
        claims = {
            "iss": self.knobs.issuer_override or self.issuer,
            "aud": self.knobs.audience_override or self.client_id,
            "sub": acct.sub,
            "email": acct.email,
            "email_verified": acct.email_verified,
            "name": acct.name,
            "nonce": self.knobs.nonce_override or grant["nonce"],
            "iat": now,
            "exp": now + 3600,
        }
        id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        return JSONResponse({"access_token": "at", "token_type": "Bearer", "expires_in": 3600, "id_token": id_token})

    async def jwks(self, _: Request) -> Response:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return JSONResponse({"keys": [jwk]})
