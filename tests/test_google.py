"""Google sign-in end to end: the real OIDC client against a local provider over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn

from ledgerx.app import create_app
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, free_port, new_email, sign_up
from tests.fake_oidc import Account, FakeOidc
from tests.tenancy_helpers import owner_sql

REDIRECT = "https://app.example.com/auth/callback"
AUTH_URL = "mutation($r: String!) { googleAuthUrl(redirectUri: $r) { url state } }"
SIGN_IN = """
mutation($c: String!, $s: String!, $r: String!) {
  googleSignIn(code: $c, state: $s, redirectUri: $r) { accessToken user { id email emailVerified } }
}
"""


@dataclasses.dataclass
class Google:
    provider: FakeOidc
    gql: GQL
    http: httpx.AsyncClient

    async def start(self, redirect: str = REDIRECT) -> tuple[str, str]:
        """Ask LedgerX for the URL, follow it to the provider as a browser would; return (code, state)."""
        data = await self.gql.ok(AUTH_URL, {"r": redirect})
        url, state = data["googleAuthUrl"]["url"], data["googleAuthUrl"]["state"]
        q = parse_qs(urlsplit(url).query)
        assert q["code_challenge_method"] == ["S256"]
        assert q["state"] == [state]
        assert q["nonce"][0]
        assert "code_verifier" not in q  # the verifier never leaves the server
        r = await self.http.get(url, follow_redirects=False)
        assert r.status_code == 302, r.text
        back = parse_qs(urlsplit(r.headers["location"]).query)
        assert back["state"] == [state]
        return back["code"][0], state


@pytest.fixture
async def google(settings: Settings) -> AsyncIterator[Google]:
    provider = FakeOidc("ledgerx-test-client", "s3cret")
    port = free_port()
    provider.issuer = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(provider.app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    svc = Services.build(
        dataclasses.replace(
            settings,
            google_issuer=provider.issuer,
            google_client_id=provider.client_id,
            google_client_secret=provider.client_secret,
        )
    )
    transport = httpx.ASGITransport(app=create_app(svc.settings, svc))
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://t") as c,
        httpx.AsyncClient() as browser,
    ):
        yield Google(provider, GQL(c), browser)
    await svc.close()
    server.should_exit = True
    await task


async def test_new_user_signs_in_with_google(google: Google) -> None:
    google.provider.account = Account(sub="g-123-new", email=new_email("g"), name="Grace")
    code, state = await google.start()
    data = await google.gql.ok(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    user = data["googleSignIn"]["user"]
    assert user["email"] == google.provider.account.email
    assert user["emailVerified"] is True
    me = await google.gql.ok("{ me { id name } }", token=data["googleSignIn"]["accessToken"])
    assert me["me"] == {"id": user["id"], "name": "Grace"}
    # PKCE really happened: the provider received a verifier that matched its challenge.
    assert google.provider.token_requests[-1]["code_verifier"]
    # Signing in again with the same Google account finds the same user.
    code, state = await google.start()
    again = await google.gql.ok(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    assert again["googleSignIn"]["user"]["id"] == user["id"]


async def test_links_existing_account_only_by_verified_email(google: Google) -> None:
    existing = await sign_up(google.gql)
    google.provider.account = Account(sub="g-unverified", email=existing.email, email_verified=False)
    code, state = await google.start()
    err = await google.gql.error(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    assert err["code"] == "UNAUTHENTICATED"
    assert err["reason"] == "email_unverified"

    google.provider.account = Account(sub="g-verified", email=existing.email, email_verified=True)
    code, state = await google.start()
    data = await google.gql.ok(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    assert data["googleSignIn"]["user"]["id"] == existing.user_id


async def test_bad_state_is_refused(google: Google) -> None:
    code, _ = await google.start()
    err = await google.gql.error(SIGN_IN, {"c": code, "s": "forged-state", "r": REDIRECT})
    assert err["code"] == "UNAUTHENTICATED"
    assert err["reason"] == "invalid_state"


async def test_state_is_single_use(google: Google) -> None:
    code, state = await google.start()
    await google.gql.ok(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    err = await google.gql.error(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    assert err["reason"] == "invalid_state"


async def test_redirect_uri_must_match(google: Google) -> None:
    code, state = await google.start()
    err = await google.gql.error(SIGN_IN, {"c": code, "s": state, "r": "https://evil.example.com/cb"})
    assert err["code"] == "UNAUTHENTICATED"
    assert err["reason"] == "invalid_state"


async def test_bad_nonce_is_refused(google: Google) -> None:
    google.provider.knobs.nonce_override = "replayed-nonce"
    code, state = await google.start()
    err = await google.gql.error(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    assert err["code"] == "UNAUTHENTICATED"
    assert err["reason"] == "invalid_nonce"


@pytest.mark.parametrize(
    "knob",
    [
        {"audience_override": "another-client"},
        {"issuer_override": "https://evil.example.com"},
        {"expired": True},
    ],
)
async def test_bad_id_token_is_refused(google: Google, knob: dict[str, object]) -> None:
    for k, v in knob.items():
        setattr(google.provider.knobs, k, v)
    code, state = await google.start()
    err = await google.gql.error(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    assert err["code"] == "UNAUTHENTICATED"
    assert err["reason"] == "invalid_id_token"


async def test_bad_redirect_uri_input(google: Google) -> None:
    err = await google.gql.error(AUTH_URL, {"r": "javascript:alert(1)"})
    assert err["code"] == "BAD_USER_INPUT"
    assert err["field"] == "redirectUri"


async def test_google_not_configured(gql: GQL) -> None:
    err = await gql.error(AUTH_URL, {"r": REDIRECT})
    assert err["code"] == "BAD_USER_INPUT"


LOG_IN = "mutation($i: LogInInput!) { logIn(input: $i) { accessToken } }"
REFRESH = "mutation($t: String) { refreshSession(refreshToken: $t) { accessToken } }"
ME = "{ me { id emailVerified } }"


async def test_linking_an_unverified_account_drops_the_unproven_password(google: Google) -> None:
    # Someone signed up with this address and never proved holding it: maybe its real owner,
    # maybe an attacker waiting for the owner to arrive through Google.
    squatter = await sign_up(google.gql)
    google.provider.account = Account(sub="g-owner", email=squatter.email, email_verified=True)
    code, state = await google.start()
    data = await google.gql.ok(SIGN_IN, {"c": code, "s": state, "r": REDIRECT})
    assert data["googleSignIn"]["user"] == {"id": squatter.user_id, "email": squatter.email, "emailVerified": True}
    # The password set by whoever signed up, and that sign-up's session, no longer open the account.
    err = await google.gql.error(LOG_IN, {"i": {"email": squatter.email, "password": squatter.password}})
    assert err["code"] == "UNAUTHENTICATED"
    assert (await google.gql.error(REFRESH, {"t": squatter.refresh}))["code"] == "UNAUTHENTICATED"
    # Nor does that session's access token, which has not expired yet.
    assert (await google.gql.error(ME, token=squatter.token))["code"] == "UNAUTHENTICATED"


async def test_google_verifies_only_when_it_says_so(google: Google, settings: Settings) -> None:
    google.provider.account = Account(sub="g-legacy", email=new_email("g"), email_verified=True)
    code, state = await google.start()
    user = (await google.gql.ok(SIGN_IN, {"c": code, "s": state, "r": REDIRECT}))["googleSignIn"]["user"]
    # An account from before Google's word was recorded (or whose claim was withdrawn).
    await owner_sql(settings, "UPDATE users SET email_verified = false WHERE email = $1", user["email"])

    google.provider.account = dataclasses.replace(google.provider.account, email_verified=False)
    code, state = await google.start()
    again = (await google.gql.ok(SIGN_IN, {"c": code, "s": state, "r": REDIRECT}))["googleSignIn"]
    assert again["user"]["emailVerified"] is False
    assert (await google.gql.ok(ME, token=again["accessToken"]))["me"]["emailVerified"] is False

    google.provider.account = dataclasses.replace(google.provider.account, email_verified=True)
    code, state = await google.start()
    third = (await google.gql.ok(SIGN_IN, {"c": code, "s": state, "r": REDIRECT}))["googleSignIn"]
    assert third["user"]["emailVerified"] is True
