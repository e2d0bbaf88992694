"""`createBillingPortalSession`: Stripe's customer portal through the real `stripe` SDK, against the
fake Stripe HTTP server (tests/fake_stripe.py). The project's Stripe Customer is created once and
reused; the return URL is checked like Checkout's redirects; only project admins open it; Stripe's
failures keep their stable codes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, PaymentsNotConfigured
from ledgerx.domain.payments import portal
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.fake_stripe import FakeStripe, stripe_settings
from tests.tenancy_helpers import add_member, create_project, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

PORTAL = "mutation($i: CreateBillingPortalSessionInput!) { createBillingPortalSession(input: $i) { url } }"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
RETURN = "https://app.example.com/billing"


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(settings, fake)


async def test_an_admin_opens_the_portal_for_the_projects_customer(
    gql: GQL, services: Services, fake: FakeStripe
) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner, name="Portal Co")
    admin = await add_member(gql, owner, pid, "ADMIN")

    url = (await gql.ok(PORTAL, {"i": {"projectId": pid, "returnUrl": RETURN}}, token=admin.token))[
        "createBillingPortalSession"
    ]["url"]
    [created] = fake.calls_to("POST", "customers")
    assert created.params["metadata"] == {"ledgerx_project_id": pid}
    customer = next(c for c in fake.of_type("customer") if c["name"] == "Portal Co")
    [call] = fake.calls_to("POST", "billing_portal/sessions")
    assert call.params == {"customer": customer["id"], "return_url": RETURN}
    session = next(s for s in fake.of_type("billing_portal.session") if s["url"] == url)
    assert session["customer"] == customer["id"]

    # A second session reuses the customer (no second one at Stripe).
    again = (await gql.ok(PORTAL, {"i": {"projectId": pid, "returnUrl": RETURN + "?x=1"}}, token=owner.token))[
        "createBillingPortalSession"
    ]["url"]
    assert again != url
    assert len(fake.calls_to("POST", "customers")) == 1
    assert [c.params["customer"] for c in fake.calls_to("POST", "billing_portal/sessions")] == [customer["id"]] * 2

    # Audited, without the URL (it logs whoever holds it into the customer's billing).
    rows = await owner_sql(
        services.settings,
        "SELECT actor_id, after FROM audit_log WHERE project_id = $1 AND action = 'payments.billing_portal.create'"
        " ORDER BY id",
        ids.decode("project", pid),
    )
    assert [r["actor_id"] for r in rows] == [ids.decode("user", admin.user_id), ids.decode("user", owner.user_id)]
    assert all(url not in r["after"] and again not in r["after"] for r in rows)
    assert json.loads(rows[0]["after"]) == {"stripeSessionId": session["id"], "returnUrl": RETURN}


async def test_who_may_open_it(gql: GQL, fake: FakeStripe) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    member = await add_member(gql, owner, pid, "MEMBER")
    i = {"i": {"projectId": pid, "returnUrl": RETURN}}
    assert (await gql.error(PORTAL, i, token=member.token))["code"] == "FORBIDDEN"
    secret = (
        await gql.ok(
            CREATE_KEY,
            {"i": {"projectId": pid, "name": "k", "scopes": ["billing:read", "billing:write"]}},
            token=owner.token,
        )
    )["createApiKey"]["secret"]
    assert (await gql.error(PORTAL, i, headers={"Authorization": f"Bearer {secret}"}))["code"] == "FORBIDDEN"
    stranger = await sign_up(gql)
    await create_project(gql, stranger)
    assert (await gql.error(PORTAL, i, token=stranger.token))["code"] == "NOT_FOUND"
    assert (await gql.error(PORTAL, i))["code"] == "UNAUTHENTICATED"
    assert fake.calls_to("POST", "billing_portal") == []
    assert fake.calls_to("POST", "customers") == []


@pytest.mark.parametrize(
    "bad",
    ["javascript:alert(1)", "ftp://app.example.com/x", "https://user:pw@app.example.com/", "/relative", ""],
)
async def test_a_return_url_that_is_not_a_plain_http_url_is_refused(gql: GQL, fake: FakeStripe, bad: str) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    err = await gql.error(PORTAL, {"i": {"projectId": pid, "returnUrl": bad}}, token=owner.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "returnUrl")
    assert fake.calls_to("POST", "billing_portal") == []


async def test_in_production_only_this_servers_origins(gql: GQL, services: Services, fake: FakeStripe) -> None:
    owner = await sign_up(gql)
    pid = ids.decode("project", await create_project(gql, owner))
    prod = dataclasses.replace(
        services.settings, env="production", checkout_redirect_origins=("https://console.example.com",)
    )
    svc = PaymentsService(services.db, services.ledger, prod, changes=services.changes)
    with pytest.raises(BadInput) as caught:
        await portal.create_billing_portal_session(
            svc, Actor.system("test"), pid, return_url="https://evil.example.net/phish"
        )
    assert caught.value.field == "returnUrl"
    done = await portal.create_billing_portal_session(
        svc, Actor.system("test"), pid, return_url="https://console.example.com/billing"
    )
    assert done.url.startswith("https://billing.stripe.test/")


async def test_stripe_failures_keep_their_codes(gql: GQL, services: Services, fake: FakeStripe) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    i = {"i": {"projectId": pid, "returnUrl": RETURN}}
    fake.fail_next("POST", "billing_portal/sessions", status=500, message="portal is down")
    err = await gql.error(PORTAL, i, token=owner.token)
    assert err["code"] == "PAYMENT_PROVIDER_ERROR"
    assert err["providerMessage"] == "portal is down" and err["providerRequestId"].startswith("req_")
    fake.fail_next(
        "POST",
        "billing_portal/sessions",
        status=400,
        kind="invalid_request_error",
        message="You can't create a portal session in test mode until you save your customer portal settings",
    )
    err = await gql.error(PORTAL, i, token=owner.token)
    assert err["code"] == "PAYMENT_PROVIDER_ERROR" and "portal settings" in err["message"]
    # Recovered: the customer created by the first try is the one used.
    assert (await gql.ok(PORTAL, i, token=owner.token))["createBillingPortalSession"]["url"]
    assert len(fake.calls_to("POST", "customers")) == 1
    no_audit = await owner_sql(
        services.settings,
        "SELECT count(*) AS n FROM audit_log WHERE project_id = $1 AND action = 'payments.billing_portal.create'",
        ids.decode("project", pid),
    )
    assert no_audit[0]["n"] == 1  # only the session that was made


async def test_without_stripe_configured(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = ids.decode("project", await create_project(gql, owner))
    bare = dataclasses.replace(services.settings, stripe_api_key=None)
    svc = PaymentsService(services.db, services.ledger, bare, changes=services.changes)
    with pytest.raises(PaymentsNotConfigured):
        await portal.create_billing_portal_session(svc, Actor.system("test"), pid, return_url=RETURN)
