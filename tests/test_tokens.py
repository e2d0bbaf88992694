"""Access tokens: every tampering or misuse is UNAUTHENTICATED; keys rotate through the JWKS."""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from ledgerx.domain.auth.keys import KeyRing, generate_pem
from ledgerx.domain.auth.tokens import AccessTokens
from ledgerx.services import Services
from tests.conftest import GQL, sign_up

ME = "{ me { id } }"


def _b64(d: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


async def _code(gql: GQL, token: str) -> str:
    return str((await gql.error(ME, token=token))["code"])


async def test_expired_token(gql: GQL, services: Services) -> None:
    u = await sign_up(gql)
    t = services.tokens.issue(u.user_id, now=time.time() - 3600)
    assert await _code(gql, t) == "UNAUTHENTICATED"


async def test_tampered_payload(gql: GQL) -> None:
    u = await sign_up(gql)
    other = await sign_up(gql)
    header, payload, sig = u.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = other.user_id
    assert await _code(gql, f"{header}.{_b64(claims)}.{sig}") == "UNAUTHENTICATED"


async def test_unknown_kid_and_foreign_key(gql: GQL, services: Services) -> None:
    u = await sign_up(gql)
    claims = jwt.decode(u.token, options={"verify_signature": False})
    foreign = serialization.load_pem_private_key(generate_pem().encode(), None)
    # Signed by a key we never issued, claiming our kid…
    forged = jwt.encode(claims, foreign, algorithm="ES256", headers={"kid": services.keys.signing.kid})  # type: ignore[arg-type]
    assert await _code(gql, forged) == "UNAUTHENTICATED"
    # …or an unknown kid.
    unknown = jwt.encode(claims, foreign, algorithm="ES256", headers={"kid": "nope"})  # type: ignore[arg-type]
    assert await _code(gql, unknown) == "UNAUTHENTICATED"


async def test_alg_none(gql: GQL, services: Services) -> None:
    u = await sign_up(gql)
    claims = jwt.decode(u.token, options={"verify_signature": False})
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': services.keys.signing.kid})}.{_b64(claims)}."
    assert await _code(gql, token) == "UNAUTHENTICATED"


async def test_hs256_with_public_key_as_secret(gql: GQL, services: Services) -> None:
    u = await sign_up(gql)
    claims = jwt.decode(u.token, options={"verify_signature": False})
    h = {"alg": "HS256", "typ": "JWT", "kid": services.keys.signing.kid}
    import hashlib
    import hmac

    secret = json.dumps(services.keys.signing.public_jwk).encode()
    signing_input = f"{_b64(h)}.{_b64(claims)}"
    sig = base64.urlsafe_b64encode(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()).rstrip(b"=")
    assert await _code(gql, f"{signing_input}.{sig.decode()}") == "UNAUTHENTICATED"


@pytest.mark.parametrize("claim", ["aud", "iss"])
async def test_wrong_audience_or_issuer(gql: GQL, services: Services, claim: str) -> None:
    u = await sign_up(gql)
    kwargs = {"issuer": services.tokens.issuer, "audience": services.tokens.audience, "ttl": 900}
    kwargs[{"aud": "audience", "iss": "issuer"}[claim]] = "someone-else"
    t = AccessTokens(services.keys, **kwargs).issue(u.user_id)  # type: ignore[arg-type]
    assert await _code(gql, t) == "UNAUTHENTICATED"


async def test_missing_required_claim(gql: GQL, services: Services) -> None:
    u = await sign_up(gql)
    claims = jwt.decode(u.token, options={"verify_signature": False})
    del claims["jti"]
    k = services.keys.signing
    t = jwt.encode(claims, k.private_key, algorithm=k.alg, headers={"kid": k.kid})  # type: ignore[arg-type]
    assert await _code(gql, t) == "UNAUTHENTICATED"


async def test_garbage_and_unknown_subject(gql: GQL, services: Services) -> None:
    assert await _code(gql, "not-a-jwt") == "UNAUTHENTICATED"
    # A well-signed token for an id that is not a user id.
    t = services.tokens.issue(f"prj_{uuid.uuid4().hex[:26]}")
    assert await _code(gql, t) == "UNAUTHENTICATED"


async def test_key_rotation_keeps_old_tokens_valid_and_publishes_both(
    gql: GQL, services: Services, jwt_keys: tuple[str, ...], client: httpx.AsyncClient
) -> None:
    u = await sign_up(gql)  # signed with key 1
    # A ring whose new signing key is key 2 and which still holds key 1.
    rotated = KeyRing([jwt_keys[1], jwt_keys[0]])
    services.keys.keys[:] = rotated.keys
    services.keys.by_kid.clear()
    services.keys.by_kid.update(rotated.by_kid)
    new_token = services.tokens.issue(u.user_id)
    assert jwt.get_unverified_header(new_token)["kid"] != jwt.get_unverified_header(u.token)["kid"]
    assert (await gql.ok(ME, token=u.token))["me"]["id"] == u.user_id
    assert (await gql.ok(ME, token=new_token))["me"]["id"] == u.user_id
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert {k["kid"] for k in jwks["keys"]} == {k.kid for k in rotated.keys}
    assert all("d" not in k for k in jwks["keys"])  # public parts only
    # Tokens verify with nothing but the published JWKS, as a resource server would.
    pub = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(new_token)["kid"]]
    jwt.decode(new_token, pub.key, algorithms=["ES256"], audience=services.tokens.audience)
