"""Registered JWT claims must have their registered types, even in a token signed with our key."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from ledgerx.services import Services
from tests.conftest import GQL, sign_up

ME = "{ me { id } }"


def _sign(services: Services, claims: dict[str, Any]) -> str:
    k = services.keys.signing
    return jwt.encode(claims, k.private_key, algorithm=k.alg, headers={"kid": k.kid})  # type: ignore[arg-type]


def _claims(services: Services, user_id: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": services.tokens.issuer,
        "aud": services.tokens.audience,
        "sub": user_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "a" * 32,
    }


async def test_a_well_typed_token_signed_with_our_key_is_accepted(gql: GQL, services: Services) -> None:
    u = await sign_up(gql)
    claims = _claims(services, u.user_id)
    assert (await gql.ok(ME, token=_sign(services, claims)))["me"]["id"] == u.user_id
    # `aud` may also be a list of strings holding ours.
    claims["aud"] = ["someone-else", services.tokens.audience]
    assert (await gql.ok(ME, token=_sign(services, claims)))["me"]["id"] == u.user_id


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "far-future"),  # a numeric string; filled in below
        ("exp", 9_999_999_999.5),
        ("iat", True),
        ("iat", "0"),
        ("nbf", True),
        ("nbf", "0"),
        ("aud", {"aud": "ledgerx"}),
        ("aud", ["ours", 7]),
        ("sub", 12345),
        ("jti", 1),
        ("sid", 42),
    ],
)
async def test_registered_claims_of_the_wrong_type_are_refused(
    gql: GQL, services: Services, claim: str, value: Any
) -> None:
    u = await sign_up(gql)
    claims = _claims(services, u.user_id)
    if value == "far-future":
        value = str(int(time.time()) + 3600)
    if claim == "aud" and isinstance(value, list):
        value = [services.tokens.audience, 7]
    claims[claim] = value
    token = _sign(services, claims)
    body = await gql(ME, token=token)
    assert body["data"] is None or body["data"].get("me") is None, body
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
    # The same over the verifier directly (what websockets and streams use).
    with pytest.raises(Exception, match="invalid access token"):
        services.tokens.verify(token)
