"""Issue #12, payments: hostile webhook bodies get a 4xx (or are stored harmlessly), provider and
"not configured" failures get stable codes, a failed Price leaves no orphan Product, an event
naming a missing credit pack fails once with a readable reason, and checkout redirects stay on
our own origins in production."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import asyncpg
import httpx
import pytest

from ledgerx import ids
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.domain.payments import inbox
from ledgerx.domain.payments.handlers.event import NotReady, Permanent
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings, SettingsError
from tests.conftest import GQL, sign_up
from tests.fake_stripe import (
    CHECKOUT,
    CREATE_PACK,
    CREATE_PLAN,
    SECRETS,
    FakeStripe,
    checkout,
    create_pack,
    deliver,
    sign,
    stripe_settings,
)
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(settings, fake, webhook_max_attempts=5, webhook_retry_base=0.01, webhook_retry_max=0.05)


async def post_signed(client: httpx.AsyncClient, payload: str, secret: str = SECRETS[0]) -> httpx.Response:
    return await client.post(
        "/webhooks/stripe",
        content=payload.encode("utf-8", "surrogatepass"),
        headers={"Stripe-Signature": sign(payload, secret), "Content-Type": "application/json"},
    )


async def stored(settings: Settings, event_id: str) -> list[dict[str, Any]]:
    rows = await owner_sql(
        settings,
        "SELECT status, attempts, last_error, payload FROM webhook_events WHERE stripe_event_id = $1",
        event_id,
    )
    return [dict(r) for r in rows]


def event_json(event_id: str, obj: str) -> str:
    """A Stripe event envelope around a hand-written `data.object` (so it can be hostile JSON)."""
    return (
        f'{{"id":{event_id},"object":"event","api_version":"2025-01-27.acacia","created":1764900000,'
        f'"livemode":false,"type":"checkout.session.completed","data":{{"object":{obj}}}}}'
    )


# -- 1. hostile webhook bodies --------------------------------------------------------------------------


async def test_hostile_webhook_bodies_get_a_clear_4xx_after_the_signature_check(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    cases = {
        "nested 50k deep": (event_json('"evt_deep_1"', '{"id":"cs_1","deep":' + deep + "}"), "nested"),
        "nested 300 deep": (
            event_json('"evt_deep_2"', '{"id":"cs_2","deep":' + '{"a":' * 300 + "1" + "}" * 300 + "}"),
            "nested",
        ),
        "NUL in the id": (event_json('"evt_nul\\u0000"', '{"id":"cs_3"}'), "NUL"),
        "NaN amount": (event_json('"evt_nan"', '{"id":"cs_4","amount_total":NaN}'), "not a Stripe event"),
    }
    for name, (payload, reason) in cases.items():
        # Unsigned (or signed with someone else's secret): refused for that, before anything is parsed.
        bad = await post_signed(client, payload, "whsec_someone_else")
        assert (bad.status_code, bad.json()) == (400, {"error": "invalid signature"}), name
        r = await post_signed(client, payload)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert reason in r.json()["error"], (name, r.json())
    for event_id in ("evt_deep_1", "evt_deep_2", "evt_nul\x00", "evt_nan"):
        if "\x00" not in event_id:
            assert await stored(settings, event_id) == []
    rows = await owner_sql(settings, "SELECT count(*) AS n FROM webhook_events WHERE stripe_event_id LIKE 'evt_nul%'")
    assert rows[0]["n"] == 0


async def test_nul_and_lone_surrogates_inside_an_event_are_stored_harmlessly(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    # Customer-typed text (a name, a custom field) may hold anything; the payment must not be lost
    # for it. PostgreSQL refuses \u0000 in jsonb and text, and UTF-8 has no lone surrogates: both
    # are stored as U+FFFD, everything else as Stripe sent it.
    payload = event_json(
        '"evt_text_1"',
        '{"id":"cs_t1","object":"checkout.session","mode":"payment","payment_status":"unpaid",'
        '"customer_details":{"name":"Ada\\u0000Lovelace","note\\u0000":"x\\ud800y"}}',
    )
    r = await post_signed(client, payload)
    assert (r.status_code, r.json()) == (200, {"received": True, "duplicate": False})
    await inbox.drain(services.payments)
    (row,) = await stored(settings, "evt_text_1")
    assert row["status"] == "PROCESSED"
    details = json.loads(row["payload"])["data"]["object"]["customer_details"]
    assert details == {"name": "Ada\ufffdLovelace", "note\ufffd": "x\ufffdy"}


# -- 2. provider and configuration failures have stable codes ---------------------------------------------


def checkout_input(project_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "i": {
            "projectId": project_id,
            "successUrl": "https://app.example.com/ok",
            "cancelUrl": "https://app.example.com/no",
            **extra,
        }
    }


async def test_payments_not_configured_has_its_own_code(gql: GQL, services: Services, settings: Settings) -> None:
    services.payments.stripe = None  # as on a server without STRIPE_API_KEY
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin)  # the catalog works without Stripe
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    err = await gql.error(CHECKOUT, checkout_input(pid, creditPackId=pack), token=owner.token)
    assert err["code"] == "PAYMENTS_NOT_CONFIGURED", err
    assert "STRIPE_API_KEY" in err["message"]


async def test_provider_errors_carry_the_providers_message_and_request_id(
    gql: GQL, settings: Settings, fake: FakeStripe
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)

    fake.fail_next(
        "POST",
        "checkout/sessions",
        status=400,
        kind="invalid_request_error",
        message="Not a valid URL",
        code="url_invalid",
    )
    err = await gql.error(CHECKOUT, checkout_input(pid, creditPackId=pack), token=owner.token)
    call = fake.calls_to("POST", "checkout/sessions")[-1]
    assert err["code"] == "PAYMENT_PROVIDER_ERROR", err
    assert err["message"] == "the payment provider failed to create a checkout session: Not a valid URL"
    assert (err["providerMessage"], err["providerCode"], err["providerStatus"]) == (
        "Not a valid URL",
        "url_invalid",
        400,
    )
    assert err["providerRequestId"] == call.request_id and call.request_id.startswith("req_")
    assert err["retryable"] is False

    # Stripe down (a 500 it says not to retry): the same code, marked as worth retrying later.
    fake.fail_next("POST", "checkout/sessions", status=500, message="An unknown error occurred")
    err = await gql.error(CHECKOUT, checkout_input(pid, creditPackId=pack), token=owner.token)
    assert (err["code"], err["providerStatus"], err["retryable"]) == ("PAYMENT_PROVIDER_ERROR", 500, True)
    assert err["providerRequestId"] == fake.calls_to("POST", "checkout/sessions")[-1].request_id

    # A key Stripe refuses: the operator's problem, told as such.
    fake.fail_next("POST", "checkout/sessions", status=401, kind="invalid_request_error", message="Invalid API Key")
    err = await gql.error(CHECKOUT, checkout_input(pid, creditPackId=pack), token=owner.token)
    assert err["code"] == "PAYMENTS_NOT_CONFIGURED", err

    # The next call goes through: the failures were Stripe's answers, not a broken state.
    await checkout(gql, owner, pid, creditPackId=pack)


# -- 3. no orphan Stripe products ----------------------------------------------------------------------


def active_products(fake: FakeStripe) -> list[dict[str, Any]]:
    return [p for p in fake.of_type("product") if p["active"]]


async def test_a_failed_price_leaves_no_product_on_sale_and_a_retry_works(
    gql: GQL, services: Services, settings: Settings, fake: FakeStripe
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack_input = {"i": {"name": "Starter", "credits": "100", "price": {"amount": 500, "currency": "usd"}}}
    plan_input = {
        "i": {
            "name": "Pro",
            "tier": "PRO",
            "interval": "MONTH",
            "price": {"amount": 2000, "currency": "USD"},
            "features": ["api"],
        }
    }
    for mutation, variables, field in (
        (CREATE_PACK, pack_input, "createCreditPack"),
        (CREATE_PLAN, plan_input, "createPlan"),
    ):
        fake.fail_next("POST", "prices", status=400, kind="invalid_request_error", message="Invalid currency")
        err = await gql.error(mutation, variables, token=admin.token)
        assert err["code"] == "PAYMENT_PROVIDER_ERROR", err
        # The Product made for it is gone (it had no Price yet, so Stripe deletes it).
        assert active_products(fake) == [], field
        assert fake.calls_to("DELETE", "products"), field
        # Retrying works and makes exactly one Product, owning the Price LedgerX saved.
        item = (await gql.ok(mutation, variables, token=admin.token))[field]
        (product,) = active_products(fake)
        price = fake.get(item["stripePriceId"])
        assert (price["product"], price["active"]) == (product["id"], True)
        assert item["id"] in product["metadata"].values()
        product["active"] = False  # out of the way for the next round

    # Input LedgerX refuses is refused before Stripe is asked: no Product at all.
    before = len(fake.of_type("product"))
    bad = {"i": {**plan_input["i"], "name": "Too many", "features": [f"f{i}" for i in range(60)]}}
    assert (await gql.error(CREATE_PLAN, bad, token=admin.token))["code"] == "BAD_USER_INPUT"
    assert len(fake.of_type("product")) == before

    # A pack saved while Stripe was not configured gets its Product when it first needs a Price
    # (at checkout): a failed Price leaves that Product with the pack, and the retry reuses it.
    gateway, services.payments.stripe = services.payments.stripe, None
    pack = await create_pack(gql, admin, credits=50, amount=300)
    services.payments.stripe = gateway
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    fake.fail_next("POST", "prices", status=500)
    err = await gql.error(CHECKOUT, checkout_input(pid, creditPackId=pack), token=owner.token)
    assert err["code"] == "PAYMENT_PROVIDER_ERROR"
    (product,) = active_products(fake)
    rows = await owner_sql(
        settings,
        "SELECT stripe_product_id, stripe_price_id FROM credit_packs WHERE id = $1",
        ids.decode("credit_pack", pack),
    )
    assert (rows[0]["stripe_product_id"], rows[0]["stripe_price_id"]) == (product["id"], None)
    await checkout(gql, owner, pid, creditPackId=pack)
    (again,) = active_products(fake)
    assert again["id"] == product["id"]


async def test_a_price_change_leaves_one_price_on_sale_whatever_stripe_answers(
    gql: GQL, settings: Settings, fake: FakeStripe
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin, credits=10, amount=100)
    update = "mutation($i: UpdateCreditPackInput!) { updateCreditPack(input: $i) { price { amount } stripePriceId } }"
    (old,) = fake.of_type("price")

    # The new Price fails: nothing changes anywhere.
    fake.fail_next("POST", "prices", status=500)
    err = await gql.error(update, {"i": {"id": pack, "price": {"amount": 200, "currency": "usd"}}}, token=admin.token)
    assert err["code"] == "PAYMENT_PROVIDER_ERROR"
    assert [p["id"] for p in fake.of_type("price") if p["active"]] == [old["id"]]

    # Archiving the old Price fails after the new one was made: the change is saved all the same
    # (the old Price is archived at Stripe only after the save, so a failed save never leaves the
    # pack with a Price Stripe stopped selling, nor a new Price nobody uses).
    fake.fail_next("POST", f"prices/{old['id']}", status=500)
    data = await gql.ok(update, {"i": {"id": pack, "price": {"amount": 300, "currency": "usd"}}}, token=admin.token)
    new_id = data["updateCreditPack"]["stripePriceId"]
    assert data["updateCreditPack"]["price"]["amount"] == "300"
    assert (fake.get(new_id)["active"], fake.get(new_id)["unit_amount"]) == (True, 300)
    assert len(fake.of_type("price")) == 2


# -- 4. events naming what is not there fail once, readably ------------------------------------------------


async def test_an_event_naming_a_missing_credit_pack_fails_once_with_a_readable_reason(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin, credits=100, amount=100)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    missing_pack = ids.encode("credit_pack", uuid7())
    missing_project = ids.encode("project", uuid7())
    # The last case has no check of its own: PostgreSQL refuses the amount (BIGINT), and the
    # inbox still stores a summary, not the statement, and knows that retrying cannot help.
    cases: dict[str, Any] = {
        "ledgerx_credit_pack_id": missing_pack,
        "ledgerx_project_id": missing_project,
        "amount_total": 10**30,
    }
    for key, missing in cases.items():
        (event,) = fake.complete_checkout(await checkout(gql, owner, pid, creditPackId=pack))
        if key == "amount_total":
            event["data"]["object"][key] = missing
        else:
            event["data"]["object"]["metadata"][key] = missing
        assert (await deliver(client, event)).status_code == 200
        for _ in range(3):  # the processor keeps running: the event is not taken again
            await inbox.drain(services.payments)
        (row,) = await stored(settings, str(event["id"]))
        assert (row["status"], row["attempts"]) == ("DEAD", 1), row
        attempts = await owner_sql(
            settings,
            "SELECT a.error FROM webhook_attempts a JOIN webhook_events e ON e.id = a.event_id"
            " WHERE e.stripe_event_id = $1",
            event["id"],
        )
        assert [a["error"] for a in attempts] == [row["last_error"]]
        for raw in ("INSERT", "SELECT", "[SQL", "asyncpg", "sqlalchemy", "parameters"):
            assert raw not in row["last_error"], row["last_error"]
        if key == "ledgerx_credit_pack_id":
            assert row["last_error"] == f"credit pack {missing_pack} not found"
        elif key == "ledgerx_project_id":
            assert row["last_error"] == f"project {missing_project} not found"
        else:
            assert row["last_error"].startswith("database error 22000: invalid input for query argument")
            assert "out of int64 range" in row["last_error"]
    wallets = await owner_sql(settings, "SELECT balance FROM wallets WHERE project_id = $1", ids.decode("project", pid))
    assert [w["balance"] for w in wallets] in ([], [0])


async def test_database_and_network_failures_are_retried_and_bad_data_is_not(settings: Settings) -> None:
    """The processor's classification, on errors raised for real (no storage is faked)."""
    assert settings.database_url

    async def timed_out() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(settings.database_url or ""))
        try:
            await conn.execute("SET statement_timeout = 10")
            await conn.fetch("SELECT pg_sleep(1)")
        finally:
            await conn.close()

    failures: list[inbox.Failure] = []
    for attempt in (
        asyncpg.connect("postgresql://127.0.0.1:1/none", timeout=2),  # PostgreSQL unreachable
        timed_out(),  # 57014, e.g. a busy database
        owner_sql(settings, "SELECT 1/0"),
        owner_sql(settings, "INSERT INTO webhook_attempts (id) VALUES (NULL)"),
    ):
        try:
            await attempt
        except Exception as exc:
            failures.append(inbox.classify(exc))
    assert [f.permanent for f in failures] == [False, False, True, True], failures
    assert all("INSERT" not in f.message and "SELECT" not in f.message for f in failures), failures
    assert inbox.classify(NotReady("later")).permanent is False
    assert inbox.classify(Permanent("credit pack pck_x not found")).message == "credit pack pck_x not found"


# -- 5. checkout redirects stay on our origins in production ------------------------------------------------


async def test_checkout_redirects_only_to_our_origins_in_production(
    gql: GQL, services: Services, settings: Settings, fake: FakeStripe
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)

    async def attempt(success: str, cancel: str = "https://app.example.com/no") -> dict[str, Any]:
        variables = {"i": {"projectId": pid, "creditPackId": pack, "successUrl": success, "cancelUrl": cancel}}
        return await gql(CHECKOUT, variables, token=owner.token)

    # Development: any http(s) URL (local front ends come and go).
    assert "errors" not in await attempt("https://elsewhere.example.net/ok")

    # Production: the origin of LEDGERX_PUBLIC_URL and CORS_ORIGINS by default.
    services.payments.settings = dataclasses.replace(
        settings,
        env="production",
        public_url="https://ledger.example.com/api",
        cors_origins=("https://App.example.com",),
    )
    for ok in (
        "https://app.example.com/ok?session={CHECKOUT_SESSION_ID}",
        "https://APP.example.com:443/ok",
        "https://ledger.example.com/billing/done",
    ):
        assert "errors" not in await attempt(ok), ok
    sessions = len(fake.calls_to("POST", "checkout/sessions"))
    for success, cancel, field in (
        ("https://evil.example.net/ok", "https://app.example.com/no", "successUrl"),
        ("https://app.example.com/ok", "https://app.example.com.evil.net/no", "cancelUrl"),
        ("https://app.example.com@evil.example.net/ok", "https://app.example.com/no", "successUrl"),
        ("http://app.example.com/ok", "https://app.example.com/no", "successUrl"),
        ("https://app.example.com:8443/ok", "https://app.example.com/no", "successUrl"),
    ):
        body = await attempt(success, cancel)
        (error,) = body["errors"]
        assert (error["extensions"]["code"], error["extensions"]["field"]) == ("BAD_USER_INPUT", field), success
    assert len(fake.calls_to("POST", "checkout/sessions")) == sessions  # Stripe never asked

    # CHECKOUT_REDIRECT_ORIGINS, when set, is the whole list.
    services.payments.settings = dataclasses.replace(
        services.payments.settings, checkout_redirect_origins=("https://shop.example.org",)
    )
    assert "errors" not in await attempt("https://shop.example.org/thanks", "https://shop.example.org/back")
    assert (await attempt("https://app.example.com/ok"))["errors"][0]["extensions"]["field"] == "successUrl"


def test_checkout_redirect_origins_setting() -> None:
    s = Settings.from_env({"CHECKOUT_REDIRECT_ORIGINS": "https://a.example.com, https://b.example.com:8443"})
    assert s.checkout_origins == ("https://a.example.com", "https://b.example.com:8443")
    s = Settings.from_env({"LEDGERX_PUBLIC_URL": "https://x.example.com/base", "CORS_ORIGINS": "https://y.example.com"})
    assert s.checkout_origins == ("https://x.example.com/base", "https://y.example.com")
    for bad in ("https://a.example.com/path", "*", "ftp://a.example.com"):
        with pytest.raises(SettingsError, match="CHECKOUT_REDIRECT_ORIGINS"):
            Settings.from_env({"CHECKOUT_REDIRECT_ORIGINS": bad})
