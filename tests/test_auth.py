"""Email/password identity: sign-up, log-in, refresh rotation with reuse detection, log-out."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, new_email, sign_up

LOG_IN = """
mutation($input: LogInInput!) { logIn(input: $input) { accessToken refreshToken user { id email } } }
"""
REFRESH = "mutation($t: String) { refreshSession(refreshToken: $t) { accessToken refreshToken user { id } } }"
LOG_OUT = "mutation($t: String) { logOut(refreshToken: $t) }"
ME = "{ me { id email name emailVerified } }"


async def test_sign_up_log_in_refresh_log_out(gql: GQL) -> None:
    u = await sign_up(gql)
    me = (await gql.ok(ME, token=u.token))["me"]
    assert me["id"] == u.user_id
    assert me["email"] == u.email
    assert me["name"] == "Test User"

    login = (await gql.ok(LOG_IN, {"input": {"email": u.email.upper(), "password": u.password}}))["logIn"]
    assert login["user"]["id"] == u.user_id
    assert (await gql.ok(ME, token=login["accessToken"]))["me"]["id"] == u.user_id

    refreshed = (await gql.ok(REFRESH, {"t": login["refreshToken"]}))["refreshSession"]
    assert refreshed["refreshToken"] != login["refreshToken"]
    assert (await gql.ok(ME, token=refreshed["accessToken"]))["me"]["id"] == u.user_id

    assert (await gql.ok(LOG_OUT, {"t": refreshed["refreshToken"]}))["logOut"] is True
    err = await gql.error(REFRESH, {"t": refreshed["refreshToken"]})
    assert err["code"] == "UNAUTHENTICATED"
    # The sign-up session is a different family and still works.
    assert (await gql.ok(REFRESH, {"t": u.refresh}))["refreshSession"]["user"]["id"] == u.user_id


async def test_refresh_token_reuse_revokes_the_family_and_is_audited(gql: GQL, settings: Settings) -> None:
    u = await sign_up(gql)
    r2 = (await gql.ok(REFRESH, {"t": u.refresh}))["refreshSession"]["refreshToken"]
    r3 = (await gql.ok(REFRESH, {"t": r2}))["refreshSession"]["refreshToken"]

    # r2 was already spent: presenting it again means it leaked.
    err = await gql.error(REFRESH, {"t": r2})
    assert err["code"] == "UNAUTHENTICATED"
    assert err["reason"] == "reused"
    # The thief's successor and the legitimate one are both dead now.
    assert (await gql.error(REFRESH, {"t": r3}))["code"] == "UNAUTHENTICATED"

    assert settings.database_url
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        rows = await conn.fetch(
            "SELECT a.action FROM audit_log a JOIN users u ON u.id = a.actor_id WHERE u.email = $1", u.email
        )
    finally:
        await conn.close()
    assert "auth.refresh_token_reused" in [r["action"] for r in rows]


async def test_concurrent_refreshes_of_one_token_yield_one_successor(gql: GQL) -> None:
    u = await sign_up(gql)
    results = await asyncio.gather(*[gql(REFRESH, {"t": u.refresh}) for _ in range(8)])
    winners = [r for r in results if not r.get("errors")]
    assert len(winners) == 1


async def test_refresh_from_http_only_cookie(gql: GQL) -> None:
    await sign_up(gql)
    cookie = gql.last.headers["set-cookie"] if gql.last else ""
    assert "lx_refresh=" in cookie
    assert "HttpOnly" in cookie
    assert "Secure" in cookie
    assert "samesite=strict" in cookie.lower()
    # httpx does not send Secure cookies over http; send it as a browser on https would.
    value = cookie.split("lx_refresh=", 1)[1].split(";", 1)[0]
    body = await gql(REFRESH, {}, headers={"Cookie": f"lx_refresh={value}"})
    assert not body.get("errors"), body


async def test_unknown_email_and_wrong_password_look_the_same(gql: GQL) -> None:
    u = await sign_up(gql)
    wrong = await gql.error(LOG_IN, {"input": {"email": u.email, "password": "not the password"}})
    unknown = await gql.error(LOG_IN, {"input": {"email": new_email(), "password": "not the password"}})
    assert wrong["code"] == unknown["code"] == "UNAUTHENTICATED"
    assert wrong["message"] == unknown["message"]


@pytest.mark.parametrize(
    ("password", "needle"),
    [("short", "at least 10"), ("aaaaaaaaaaaa", "different characters"), ("password123", "too common")],
)
async def test_password_policy(gql: GQL, password: str, needle: str) -> None:
    body = await gql.error(
        "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
        {"i": {"email": new_email(), "password": password}},
    )
    assert body["code"] == "BAD_USER_INPUT"
    assert body["field"] == "password"
    assert needle in body["message"]


async def test_bad_email_and_duplicate_email(gql: GQL) -> None:
    q = "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }"
    bad = await gql.error(q, {"i": {"email": "not-an-email", "password": "correct horse battery"}})
    assert bad["code"] == "BAD_USER_INPUT"
    assert bad["field"] == "email"
    u = await sign_up(gql)
    dup = await gql.error(q, {"i": {"email": u.email.upper(), "password": "correct horse battery"}})
    assert dup["code"] == "CONFLICT"


async def test_login_rehashes_when_parameters_change(settings: Settings, gql: GQL) -> None:
    u = await sign_up(gql)
    assert settings.database_url
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        before = await conn.fetchval("SELECT password_hash FROM users WHERE email = $1", u.email)
        assert before.startswith("$argon2id$")
        assert ",t=1," in before
        stronger = Services.build(dataclasses.replace(settings, argon2_time_cost=2))
        try:
            from ledgerx.domain.actor import Actor

            await stronger.auth.log_in(u.email, u.password, Actor("anonymous"))
        finally:
            await stronger.close()
        after = await conn.fetchval("SELECT password_hash FROM users WHERE email = $1", u.email)
    finally:
        await conn.close()
    assert after != before
    assert ",t=2," in after
    # The new hash still verifies through the normal path.
    assert (await gql.ok(LOG_IN, {"input": {"email": u.email, "password": u.password}}))["logIn"]


async def test_log_in_is_rate_limited_per_email(settings: Settings) -> None:
    import httpx

    from ledgerx.app import create_app

    strict = Services.build(dataclasses.replace(settings, login_limit_per_email=3))
    try:
        transport = httpx.ASGITransport(app=create_app(strict.settings, strict))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            gql = GQL(c)
            u = await sign_up(gql)
            for _ in range(3):
                assert (await gql.error(LOG_IN, {"input": {"email": u.email, "password": "wrong password!"}}))[
                    "code"
                ] == "UNAUTHENTICATED"
            # The fourth attempt is refused before the password is even checked (right one included).
            err = await gql.error(LOG_IN, {"input": {"email": u.email, "password": u.password}})
            assert err["code"] == "RATE_LIMITED"
            assert err["retryAfter"] >= 1
            assert gql.last is not None
            assert gql.last.status_code == 429
            assert int(gql.last.headers["retry-after"]) >= 1
            # Another email from the same client is not affected by this email's bucket.
            other = await sign_up(gql)
            assert (await gql.ok(LOG_IN, {"input": {"email": other.email, "password": other.password}}))["logIn"]
    finally:
        await strict.close()
