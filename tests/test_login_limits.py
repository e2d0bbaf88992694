"""Log-in limiting counts failures: tight per (case-folded email, client IP), loose per email, per
IP across emails; the right password from a client that has not been failing always gets in."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from redis.asyncio import Redis

from ledgerx.app import create_app
from ledgerx.domain.auth.login_limits import Bucket, LoginThrottle
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, free_port, new_email, sign_up

LOG_IN = "mutation($i: LogInInput!) { logIn(input: $i) { accessToken user { id } } }"
WRONG = "not the password!"

Client = Callable[[str], AbstractAsyncContextManager[GQL]]


@pytest.fixture
async def app_from(settings: Settings) -> AsyncIterator[Client]:
    """The app with the default log-in limits (5 per email and IP, 30 per IP); `client(ip)` opens a
    client that connects from that address."""
    svc = Services.build(dataclasses.replace(settings, login_limit_per_email=5, login_limit_per_ip=30))
    app = create_app(svc.settings, svc)

    @asynccontextmanager
    async def client(ip: str) -> AsyncIterator[GQL]:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield GQL(c)

    yield client
    await svc.close()


async def log_in(gql: GQL, email: str, password: str) -> str | None:
    """None when signed in, else the error code."""
    body = await gql(LOG_IN, {"i": {"email": email, "password": password}})
    if body.get("errors"):
        return str(body["errors"][0]["extensions"]["code"])
    return None


async def victim(client: Client) -> SignedIn:
    async with client("198.51.100.1") as gql:
        return await sign_up(gql)


async def test_a_guessing_client_is_refused_and_the_owner_still_signs_in(app_from: Client) -> None:
    user = await victim(app_from)
    async with app_from("203.0.113.66") as attacker, app_from("198.51.100.2") as owner:
        for _ in range(5):
            assert await log_in(attacker, user.email, WRONG) == "UNAUTHENTICATED"
        # The 6th guess from that client is refused, with a retry hint and HTTP 429.
        body = await attacker(LOG_IN, {"i": {"email": user.email, "password": WRONG}})
        ext = body["errors"][0]["extensions"]
        assert (ext["code"], ext["scope"]) == ("RATE_LIMITED", "email_ip")
        assert ext["retryAfter"] >= 1
        assert attacker.last is not None and attacker.last.status_code == 429
        # So is the right password from it: it has been guessing.
        assert await log_in(attacker, user.email, user.password) == "RATE_LIMITED"
        # The owner, from a client that has not been failing, signs in during the attack.
        assert await log_in(owner, user.email, user.password) is None
        assert await log_in(owner, user.email, user.password) is None


async def test_a_guessing_attack_spread_over_many_ips_does_not_lock_the_owner_out(app_from: Client) -> None:
    user = await victim(app_from)
    # 10 clients x 5 failures fill the email-wide counter (10x the per-client one).
    for n in range(10):
        async with app_from(f"203.0.113.{n + 1}") as bot:
            for _ in range(5):
                assert await log_in(bot, user.email, WRONG) == "UNAUTHENTICATED"
    async with app_from("203.0.113.200") as fresh_bot:
        # A new client gets its password checked once, then it is a failing client.
        assert await log_in(fresh_bot, user.email, WRONG) == "UNAUTHENTICATED"
        body = await fresh_bot(LOG_IN, {"i": {"email": user.email, "password": WRONG}})
        assert body["errors"][0]["extensions"]["scope"] == "email"
    async with app_from("198.51.100.9") as owner:
        assert await log_in(owner, user.email, user.password) is None


async def test_failures_count_per_case_folded_email(app_from: Client) -> None:
    user = await victim(app_from)
    local, domain = user.email.split("@")
    spellings = [
        user.email.upper(),
        f" {local.capitalize()}@{domain.upper()} ",
        user.email,
        # Full-width letters fold to the same address (NFKC), so they cannot buy extra guesses.
        "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in local) + "@" + domain,
        user.email.swapcase(),
    ]
    async with app_from("203.0.113.77") as attacker:
        for spelling in spellings:
            assert await log_in(attacker, spelling, WRONG) == "UNAUTHENTICATED"
        assert await log_in(attacker, user.email.title(), user.password) == "RATE_LIMITED"


async def test_only_failures_count_and_success_clears_the_client(app_from: Client) -> None:
    user = await victim(app_from)
    async with app_from("198.51.100.3") as owner:
        # A clumsy owner: four typos, success, four typos, success... never refused.
        for _ in range(3):
            for _ in range(4):
                assert await log_in(owner, user.email, WRONG) == "UNAUTHENTICATED"
            assert await log_in(owner, user.email, user.password) is None
        # Successes are not attempts that count: many in a row are fine.
        for _ in range(8):
            assert await log_in(owner, user.email, user.password) is None


async def test_one_ip_failing_across_many_emails_is_refused(app_from: Client) -> None:
    user = await victim(app_from)
    async with app_from("203.0.113.90") as stuffer, app_from("198.51.100.4") as owner:
        # Credential stuffing: one guess per address (unknown addresses count too).
        for _ in range(30):
            assert await log_in(stuffer, new_email("stuffed"), WRONG) == "UNAUTHENTICATED"
        body = await stuffer(LOG_IN, {"i": {"email": user.email, "password": user.password}})
        assert body["errors"][0]["extensions"]["scope"] == "ip"
        assert await log_in(owner, user.email, user.password) is None


async def test_concurrent_guesses_cannot_slip_past_the_limit(app_from: Client) -> None:
    user = await victim(app_from)
    async with app_from("203.0.113.55") as attacker:
        codes = await asyncio.gather(*[log_in(attacker, user.email, WRONG) for _ in range(20)])
    # Each attempt reserves its failure before the password is checked: exactly 5 were checked.
    assert sorted(c or "" for c in codes) == ["RATE_LIMITED"] * 15 + ["UNAUTHENTICATED"] * 5


async def test_without_redis_the_same_rules_hold_per_instance() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    throttle = LoginThrottle(dead, prefix="lxt:", pair=Bucket(5, 1 / 60), per_ip=Bucket(30, 0.1))
    try:
        for _ in range(5):
            assert await throttle.attempt("Ada@Example.com", "203.0.113.1") is None
        refused = await throttle.attempt("ada@example.com", "203.0.113.1")
        assert refused is not None and refused.scope == "email_ip"
        assert await throttle.attempt("ada@example.com", "203.0.113.2") is None
        await throttle.succeeded("ada@example.com", "203.0.113.2")
    finally:
        await dead.aclose()
