"""Coupons end to end: platform admins create (synced to Stripe as a coupon and a promotion code
through the SDK against the fake server), list and archive them; refused input writes nothing,
here or at Stripe; Checkout carries the promotion code and reserves a redemption that completes
or is released; `applyCoupon` on a running subscription; bonus credits land once; the limit holds
under 50 concurrent redemptions."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.payments.handlers import dispatch
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.fake_stripe import (
    CHECKOUT,
    FakeStripe,
    checkout,
    create_pack,
    create_plan,
    deliver_and_process,
    stripe_settings,
)
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

COUPON_FIELDS = """
id code name percentOff amountOff { amount currency } bonusCredits bonusCreditsValidDays duration durationInMonths
maxRedemptions timesRedeemed expiresAt appliesTo stripeCouponId stripePromotionCodeId archived createdAt
"""
CREATE = f"mutation($i: CreateCouponInput!) {{ createCoupon(input: $i) {{ {COUPON_FIELDS} }} }}"
ARCHIVE = f"mutation($id: ID!) {{ archiveCoupon(id: $id) {{ {COUPON_FIELDS} }} }}"
LIST = f"query($a: Boolean!) {{ coupons(includeArchived: $a) {{ {COUPON_FIELDS} }} }}"
APPLY = """
mutation($i: ApplyCouponInput!) {
  applyCoupon(input: $i) { id projectId couponId code status subscriptionId bonusCredits bonusTransactionId }
}
"""
PAYMENTS = """
query($p: ID!) { payments(projectId: $p) { edges { node {
  id amount { amount currency } discount { amount currency } couponId credits stripeCheckoutSessionId
} } } }
"""


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    # Many requests from one user in the concurrency test: no gateway limit in the way.
    return stripe_settings(settings, fake, rate_limit_burst=100_000, rate_limit_per_second=10_000.0)


@dataclasses.dataclass
class World:
    gql: GQL
    client: httpx.AsyncClient
    services: Services
    settings: Settings
    fake: FakeStripe
    admin: SignedIn
    owner: SignedIn
    projects: list[str]

    async def project(self) -> str:
        pid = await create_project(self.gql, self.owner)
        self.projects.append(pid)
        return pid

    async def coupon(self, **fields: Any) -> dict[str, Any]:
        data = await self.gql.ok(CREATE, {"i": {"name": "Promo", **fields}}, token=self.admin.token)
        return dict(data["createCoupon"])

    async def send(self, *events: dict[str, Any]) -> None:
        await deliver_and_process(self.client, self.services, *events)

    async def sql(self, query: str, *args: object) -> list[Any]:
        return await owner_sql(self.settings, query, *args)

    async def times_redeemed(self, coupon_id: str) -> int:
        rows = await self.sql("SELECT times_redeemed FROM coupons WHERE id = $1", ids.decode("coupon", coupon_id))
        return int(rows[0]["times_redeemed"])

    async def balance(self, project_id: str) -> int:
        rows = await self.sql(
            "SELECT coalesce(sum(balance), 0)::bigint AS b FROM wallets WHERE project_id = $1",
            ids.decode("project", project_id),
        )
        return int(rows[0]["b"])


@pytest.fixture
async def world(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe
) -> AsyncIterator[World]:
    admin = await make_platform_admin(gql, settings)
    owner = await sign_up(gql)
    w = World(gql, client, services, settings, fake, admin, owner, [])
    yield w
    for p in w.projects:
        report = await verify_ledger(services.ledger, ids.decode("project", p))
        assert report.ok, report.mismatches


def unique(prefix: str) -> str:
    return f"{prefix}-{ids.uuid7().hex[-10:]}".upper()


async def open_checkout(w: World, project_id: str, **target: str) -> dict[str, Any]:
    return await w.gql(
        CHECKOUT,
        {
            "i": {
                "projectId": project_id,
                "successUrl": "https://app.example.com/ok",
                "cancelUrl": "https://app.example.com/no",
                **target,
            }
        },
        token=w.owner.token,
    )


# -- the catalog side ------------------------------------------------------------------------------------


async def test_create_list_archive_synced_to_stripe(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=1000, amount=1000)
    plan = await create_plan(w.gql, w.admin, name="Coupon Pro", amount=2000)
    code = unique("spring")
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(microsecond=0)
    c = await w.coupon(
        code=code.lower(),
        name="Spring sale",
        percentOff=12.5,
        duration="REPEATING",
        durationInMonths=3,
        maxRedemptions=20,
        expiresAt=expires.isoformat(),
        appliesTo=[plan, pack],
    )
    assert c["id"].startswith("cpn_") and c["code"] == code
    assert (c["percentOff"], c["amountOff"], c["duration"], c["durationInMonths"]) == (12.5, None, "REPEATING", 3)
    assert (c["maxRedemptions"], c["timesRedeemed"], c["archived"]) == (20, 0, False)
    assert c["appliesTo"] == [plan, pack]
    # The Stripe side, as the SDK created it.
    sc = w.fake.get(c["stripeCouponId"])
    assert sc["id"] == c["id"] and sc["percent_off"] == 12.5 and sc["duration"] == "repeating"
    assert sc["duration_in_months"] == 3 and sc["metadata"]["ledgerx_coupon_id"] == c["id"]
    products = {w.fake.get(p["stripe_price_id"])["product"] for p in await _catalog_prices(w, plan, pack)}
    assert set(sc["applies_to"]["products"]) == products
    promo = w.fake.get(c["stripePromotionCodeId"])
    assert promo["code"] == code and promo["active"] is True and promo["promotion"]["coupon"] == sc["id"]
    assert promo["max_redemptions"] == 20 and promo["expires_at"] == int(expires.timestamp())

    amount = await w.coupon(code=unique("tenoff"), amountOff={"amount": 1000, "currency": "usd"}, duration="FOREVER")
    assert amount["amountOff"] == {"amount": "1000", "currency": "USD"} and amount["percentOff"] is None
    assert w.fake.get(amount["stripeCouponId"])["amount_off"] == 1000
    bonus = await w.coupon(code=unique("bonus"), bonusCredits="500")
    assert bonus["bonusCredits"] == "500" and bonus["stripeCouponId"] is None and bonus["stripePromotionCodeId"] is None

    listed = {x["id"] for x in (await w.gql.ok(LIST, {"a": False}, token=w.admin.token))["coupons"]}
    assert {c["id"], amount["id"], bonus["id"]} <= listed

    archived = (await w.gql.ok(ARCHIVE, {"id": c["id"]}, token=w.admin.token))["archiveCoupon"]
    assert archived["archived"] is True
    assert w.fake.get(c["stripePromotionCodeId"])["active"] is False
    again = (await w.gql.ok(ARCHIVE, {"id": c["id"]}, token=w.admin.token))["archiveCoupon"]
    assert again["archived"] is True
    assert len(w.fake.calls_to("POST", f"promotion_codes/{c['stripePromotionCodeId']}")) == 1
    listed = {x["id"] for x in (await w.gql.ok(LIST, {"a": False}, token=w.admin.token))["coupons"]}
    assert c["id"] not in listed
    listed = {x["id"] for x in (await w.gql.ok(LIST, {"a": True}, token=w.admin.token))["coupons"]}
    assert c["id"] in listed
    audits = await w.sql("SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id", c["id"])
    assert [a["action"] for a in audits] == ["catalog.coupon.create", "catalog.coupon.archive"]


async def _catalog_prices(w: World, plan: str, pack: str) -> list[Any]:
    return await w.sql(
        "SELECT stripe_price_id FROM catalog_prices WHERE plan_id = $1 OR credit_pack_id = $2",
        ids.decode("plan", plan),
        ids.decode("credit_pack", pack),
    )


FUTURE = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat()
PAST = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"code": "no spaces", "percentOff": 10}, "code"),
    ({"code": "UNDER_SCORE", "percentOff": 10}, "code"),
    ({"code": "AB", "percentOff": 10}, "code"),
    ({"percentOff": 10, "amountOff": {"amount": 100, "currency": "USD"}}, "amountOff"),
    ({}, "percentOff"),
    ({"percentOff": 0}, "percentOff"),
    ({"percentOff": 100.5}, "percentOff"),
    ({"percentOff": 12.345}, "percentOff"),
    ({"amountOff": {"amount": 0, "currency": "USD"}}, "amountOff.amount"),
    ({"amountOff": {"amount": 100, "currency": "XX"}}, "amountOff.currency"),
    ({"bonusCredits": "0"}, "bonusCredits"),
    ({"bonusCredits": "100", "duration": "FOREVER"}, "duration"),
    ({"percentOff": 10, "bonusCreditsValidDays": 30}, "bonusCreditsValidDays"),
    ({"bonusCredits": "100", "bonusCreditsValidDays": 0}, "bonusCreditsValidDays"),
    ({"percentOff": 10, "duration": "REPEATING"}, "durationInMonths"),
    ({"percentOff": 10, "duration": "ONCE", "durationInMonths": 2}, "durationInMonths"),
    ({"percentOff": 10, "maxRedemptions": 0}, "maxRedemptions"),
    ({"percentOff": 10, "expiresAt": PAST}, "expiresAt"),
    ({"percentOff": 10, "appliesTo": ["pln_00000000000000000000000000"]}, "appliesTo"),
    ({"percentOff": 10, "appliesTo": ["wal_00000000000000000000000000"]}, "appliesTo"),
    ({"name": " ", "percentOff": 10}, "name"),
]


async def test_bad_input_writes_nothing(world: World) -> None:
    w = world
    taken = await w.coupon(code=unique("taken"), percentOff=5)
    eur_pack = await create_pack(w.gql, w.admin, credits=10, amount=100, currency="eur")
    cases = [
        *BAD_INPUTS,
        ({"code": taken["code"].lower(), "percentOff": 10}, "code"),
        ({"amountOff": {"amount": 100, "currency": "USD"}, "appliesTo": [eur_pack]}, "appliesTo"),
    ]
    before_rows = await w.sql("SELECT count(*) AS n FROM coupons")
    before_stripe = (len(w.fake.of_type("coupon")), len(w.fake.of_type("promotion_code")))
    for fields, field in cases:
        body = {"code": unique("bad"), "name": "Bad", "expiresAt": FUTURE, **fields}
        err = await w.gql.error(CREATE, {"i": body}, token=w.admin.token)
        assert (err.get("code"), err.get("field")) == ("BAD_USER_INPUT", field), (fields, err)
    assert (await w.sql("SELECT count(*) AS n FROM coupons"))[0]["n"] == before_rows[0]["n"]
    assert (len(w.fake.of_type("coupon")), len(w.fake.of_type("promotion_code"))) == before_stripe


async def test_stripe_failure_leaves_nothing_behind(world: World) -> None:
    w = world
    code = unique("fail")
    w.fake.fail_next("POST", "promotion_codes", status=500)
    err = await w.gql.error(CREATE, {"i": {"code": code, "name": "X", "percentOff": 10}}, token=w.admin.token)
    assert err["code"] == "PAYMENT_PROVIDER_ERROR"
    # The Stripe coupon made before the failure was deleted; no row was saved.
    assert not [
        c
        for c in w.fake.of_type("coupon")
        if c["metadata"].get("ledgerx_coupon_id", "").startswith("cpn_") and c["name"] == "X"
    ]
    assert w.fake.calls_to("DELETE", "coupons/")
    assert not await w.sql("SELECT id FROM coupons WHERE code = $1", code)
    # The code is free again: a retry succeeds.
    ok = await w.coupon(code=code, percentOff=10)
    assert ok["code"] == code


async def test_non_admins_refused(world: World) -> None:
    w = world
    c = await w.coupon(code=unique("admin"), percentOff=10)
    body = {"i": {"code": unique("nope"), "name": "No", "percentOff": 10}}
    assert (await w.gql.error(CREATE, body, token=w.owner.token))["code"] == "FORBIDDEN"
    assert (await w.gql.error(ARCHIVE, {"id": c["id"]}, token=w.owner.token))["code"] == "FORBIDDEN"
    assert (await w.gql.error(LIST, {"a": True}, token=w.owner.token))["code"] == "FORBIDDEN"
    assert (await w.gql.error(LIST, {"a": True}))["code"] == "UNAUTHENTICATED"
    assert not await w.sql("SELECT id FROM coupons WHERE code = $1", body["i"]["code"])


# -- checkout ------------------------------------------------------------------------------------------


async def test_checkout_with_coupon_discount_and_bonus_once(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=1000, amount=1000)
    c = await w.coupon(
        code=unique("pack"), percentOff=25, bonusCredits="500", bonusCreditsValidDays=30, appliesTo=[pack]
    )
    assert c["bonusCreditsValidDays"] == 30
    pid = await w.project()
    sid = await checkout(w.gql, w.owner, pid, creditPackId=pack, couponCode=c["code"].lower())
    call = w.fake.calls_to("POST", "checkout/sessions")[-1]
    assert call.params["discounts"] == [{"promotion_code": c["stripePromotionCodeId"]}]
    assert call.params["metadata"]["ledgerx_coupon_id"] == c["id"]
    sess = w.fake.get(sid)
    assert sess["amount_total"] == 750 and sess["total_details"]["amount_discount"] == 250
    assert await w.times_redeemed(c["id"]) == 1  # reserved
    (row,) = await w.sql("SELECT status FROM coupon_redemptions WHERE stripe_checkout_session_id = $1", sid)
    assert row["status"] == "RESERVED"

    events = w.fake.complete_checkout(sid)
    await w.send(*events)
    assert await w.balance(pid) == 1500
    (row,) = await w.sql(
        "SELECT status, payment_id, bonus_transaction_id FROM coupon_redemptions WHERE stripe_checkout_session_id = $1",
        sid,
    )
    assert row["status"] == "REDEEMED" and row["payment_id"] is not None and row["bonus_transaction_id"] is not None
    # The bonus is a PROMOTIONAL grant expiring 30 days after the redemption; the pack's credits are PAID.
    (grant,) = await w.sql(
        "SELECT g.category, g.amount, g.expires_at, r.redeemed_at FROM credit_grants g"
        " JOIN coupon_redemptions r ON r.bonus_transaction_id = g.source_transaction_id"
        " WHERE r.stripe_checkout_session_id = $1",
        sid,
    )
    assert (grant["category"], grant["amount"]) == ("PROMOTIONAL", 500)
    assert grant["expires_at"] == grant["redeemed_at"] + dt.timedelta(days=30)
    pay = (await w.gql.ok(PAYMENTS, {"p": pid}, token=w.owner.token))["payments"]["edges"][0]["node"]
    assert pay["amount"] == {"amount": "750", "currency": "USD"}
    assert pay["discount"] == {"amount": "250", "currency": "USD"} and pay["couponId"] == c["id"]

    # The same event again (Stripe retries) and an explicit replay: no more credits, still one redemption.
    await w.send(*events)
    completed = next(e for e in events if e["type"] == "checkout.session.completed")
    await dispatch.handle(w.services.payments, completed)
    assert await w.balance(pid) == 1500
    assert await w.times_redeemed(c["id"]) == 1
    bonus = await w.sql(
        "SELECT count(*) AS n FROM ledger_transactions WHERE project_id = $1 AND kind = 'PROMOTION'",
        ids.decode("project", pid),
    )
    assert bonus[0]["n"] == 1


async def test_checkout_refuses_unusable_codes(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=100, amount=500)
    other = await create_pack(w.gql, w.admin, credits=100, amount=600)
    eur = await create_pack(w.gql, w.admin, credits=100, amount=600, currency="eur")
    archived = await w.coupon(code=unique("arch"), percentOff=10)
    await w.gql.ok(ARCHIVE, {"id": archived["id"]}, token=w.admin.token)
    expiring = await w.coupon(code=unique("exp"), percentOff=10, expiresAt=FUTURE)
    only_other = await w.coupon(code=unique("other"), percentOff=10, appliesTo=[other])
    usd_off = await w.coupon(code=unique("usd"), amountOff={"amount": 100, "currency": "USD"})
    one = await w.coupon(code=unique("one"), percentOff=10, maxRedemptions=1)
    p1, p2 = await w.project(), await w.project()
    assert (await open_checkout(w, p1, creditPackId=pack, couponCode=one["code"])).get("data")
    sessions_before = len(w.fake.calls_to("POST", "checkout/sessions"))

    svc = w.services.payments
    real_clock = svc.clock
    cases: list[tuple[str, str | None, str]] = [
        ("NO-SUCH-CODE", pack, "unknown"),
        ("bad code!", pack, "unknown"),
        (archived["code"], pack, "ARCHIVED"),
        (only_other["code"], pack, "NOT_APPLICABLE"),
        (usd_off["code"], eur, "NOT_APPLICABLE"),
        (one["code"], pack, "EXHAUSTED"),
    ]
    for code, target, reason in cases:
        body = await open_checkout(w, p2, creditPackId=str(target), couponCode=code)
        ext = body["errors"][0]["extensions"]
        assert (ext["code"], ext["field"]) == ("BAD_USER_INPUT", "couponCode"), (code, body)
        if reason != "unknown":
            assert ext.get("reason") == reason, (code, ext)
    try:
        svc.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=4)
        body = await open_checkout(w, p2, creditPackId=pack, couponCode=expiring["code"])
        ext = body["errors"][0]["extensions"]
        assert (ext["code"], ext["field"], ext.get("reason")) == ("BAD_USER_INPUT", "couponCode", "EXPIRED")
    finally:
        svc.clock = real_clock
    assert len(w.fake.calls_to("POST", "checkout/sessions")) == sessions_before
    rows = await w.sql("SELECT count(*) AS n FROM coupon_redemptions WHERE project_id = $1", ids.decode("project", p2))
    assert rows[0]["n"] == 0
    # A project redeems a coupon once.
    again = await open_checkout(w, p1, creditPackId=pack, couponCode=expiring["code"])
    assert again.get("data"), again
    twice = await open_checkout(w, p1, creditPackId=pack, couponCode=expiring["code"])
    ext = twice["errors"][0]["extensions"]
    assert (ext["field"], ext.get("reason")) == ("couponCode", "ALREADY_REDEEMED")
    assert await w.times_redeemed(expiring["id"]) == 1


async def test_expired_session_releases_its_slot(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=100, amount=500)
    c = await w.coupon(code=unique("hold"), percentOff=50, maxRedemptions=1)
    p1, p2 = await w.project(), await w.project()
    sid = await checkout(w.gql, w.owner, p1, creditPackId=pack, couponCode=c["code"])
    # The session is held for an hour at Stripe.
    assert 3500 <= w.fake.get(sid)["expires_at"] - w.fake.time() <= 3600
    refused = await open_checkout(w, p2, creditPackId=pack, couponCode=c["code"])
    assert refused["errors"][0]["extensions"].get("reason") == "EXHAUSTED"
    expired = w.fake.expire_checkout(sid)
    await w.send(expired)
    await w.send(expired)  # delivered twice: released once
    await dispatch.handle(w.services.payments, expired)
    assert await w.times_redeemed(c["id"]) == 0
    (row,) = await w.sql("SELECT status FROM coupon_redemptions WHERE stripe_checkout_session_id = $1", sid)
    assert row["status"] == "RELEASED"
    sid2 = await checkout(w.gql, w.owner, p2, creditPackId=pack, couponCode=c["code"])
    assert await w.times_redeemed(c["id"]) == 1
    await w.send(*w.fake.complete_checkout(sid2))
    assert await w.times_redeemed(c["id"]) == 1


async def test_stripe_failure_at_checkout_keeps_the_slot(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=100, amount=500)
    c = await w.coupon(code=unique("keep"), percentOff=50, maxRedemptions=1)
    pid = await w.project()
    w.fake.fail_next("POST", "checkout/sessions", status=500)
    body = await open_checkout(w, pid, creditPackId=pack, couponCode=c["code"])
    assert body["errors"][0]["extensions"]["code"] == "PAYMENT_PROVIDER_ERROR"
    assert await w.times_redeemed(c["id"]) == 0
    assert not await w.sql("SELECT id FROM coupon_redemptions WHERE coupon_id = $1", ids.decode("coupon", c["id"]))
    assert (await open_checkout(w, pid, creditPackId=pack, couponCode=c["code"])).get("data")


async def test_fifty_concurrent_redemptions_take_ten_slots(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=100, amount=500)
    c = await w.coupon(code=unique("rush"), percentOff=10, maxRedemptions=10)
    projects = [await w.project() for _ in range(50)]
    results = await asyncio.gather(*(open_checkout(w, p, creditPackId=pack, couponCode=c["code"]) for p in projects))
    ok = [r for r in results if r.get("data") and r["data"].get("createCheckoutSession")]
    refused = [r["errors"][0]["extensions"] for r in results if r.get("errors")]
    assert len(ok) == 10 and len(refused) == 40
    assert all(
        (e["code"], e["field"], e.get("reason")) == ("BAD_USER_INPUT", "couponCode", "EXHAUSTED") for e in refused
    )
    assert await w.times_redeemed(c["id"]) == 10
    rows = await w.sql(
        "SELECT count(*) AS n FROM coupon_redemptions WHERE coupon_id = $1 AND status = 'RESERVED'",
        ids.decode("coupon", c["id"]),
    )
    assert rows[0]["n"] == 10
    with_discount = [
        s for s in w.fake.of_type("checkout.session") if s["discounts"] and s["discounts"][0]["coupon"] == c["id"]
    ]
    assert len(with_discount) == 10


# -- a running subscription ------------------------------------------------------------------------------


async def _subscribed(w: World, plan: str) -> tuple[str, str]:
    pid = await w.project()
    sid = await checkout(w.gql, w.owner, pid, planId=plan)
    await w.send(*w.fake.complete_checkout(sid))
    return pid, str(w.fake.get(sid)["subscription"])


async def test_apply_coupon_to_running_subscription(world: World) -> None:
    w = world
    plan = await create_plan(w.gql, w.admin, name="Coupon Sub", amount=2000)
    other = await create_plan(w.gql, w.admin, name="Coupon Other", amount=3000)
    c = await w.coupon(code=unique("loyal"), percentOff=20, duration="FOREVER", bonusCredits="300", appliesTo=[plan])
    elsewhere = await w.coupon(code=unique("else"), percentOff=20, appliesTo=[other])
    pid, stripe_sub = await _subscribed(w, plan)
    before = await w.balance(pid)

    red = (await w.gql.ok(APPLY, {"i": {"projectId": pid, "code": c["code"].lower()}}, token=w.owner.token))[
        "applyCoupon"
    ]
    assert red["id"].startswith("cpr_") and red["status"] == "REDEEMED" and red["couponId"] == c["id"]
    assert red["bonusCredits"] == "300" and red["bonusTransactionId"] and red["subscriptionId"]
    sub = w.fake.get(stripe_sub)
    assert len(sub["discounts"]) == 1
    discount = w.fake.get(sub["discounts"][0])
    assert discount["promotion_code"] == c["stripePromotionCodeId"] and discount["coupon"]["id"] == c["id"]
    assert await w.balance(pid) == before + 300
    assert await w.times_redeemed(c["id"]) == 1
    (grant,) = await w.sql(
        "SELECT category, expires_at FROM credit_grants WHERE source_transaction_id = $1",
        ids.decode("transaction", red["bonusTransactionId"]),
    )
    assert (grant["category"], grant["expires_at"]) == ("PROMOTIONAL", None)

    # Once per project; a coupon for another plan; a code that does not exist: field "code", nothing written.
    for code, reason in ((c["code"], "ALREADY_REDEEMED"), (elsewhere["code"], "NOT_APPLICABLE"), ("NOPE-NOPE", None)):
        ext = await w.gql.error(APPLY, {"i": {"projectId": pid, "code": code}}, token=w.owner.token)
        assert (ext["code"], ext["field"]) == ("BAD_USER_INPUT", "code") and ext.get("reason") == reason, ext
    assert len(w.fake.get(stripe_sub)["discounts"]) == 1
    assert await w.balance(pid) == before + 300
    assert await w.times_redeemed(elsewhere["id"]) == 0

    # No subscription: nothing to apply to.
    bare = await w.project()
    ext = await w.gql.error(APPLY, {"i": {"projectId": bare, "code": elsewhere["code"]}}, token=w.owner.token)
    assert (ext["code"], ext["field"]) == ("CONFLICT", "projectId")


async def test_apply_coupon_stripe_failure_writes_nothing(world: World) -> None:
    w = world
    plan = await create_plan(w.gql, w.admin, name="Coupon Fail", amount=2000)
    c = await w.coupon(code=unique("flaky"), amountOff={"amount": 500, "currency": "USD"}, bonusCredits="100")
    pid, stripe_sub = await _subscribed(w, plan)
    before = await w.balance(pid)
    w.fake.fail_next("POST", f"subscriptions/{stripe_sub}", status=500)
    ext = await w.gql.error(APPLY, {"i": {"projectId": pid, "code": c["code"]}}, token=w.owner.token)
    assert ext["code"] == "PAYMENT_PROVIDER_ERROR"
    assert await w.times_redeemed(c["id"]) == 0 and await w.balance(pid) == before
    assert not w.fake.get(stripe_sub)["discounts"]
    red = (await w.gql.ok(APPLY, {"i": {"projectId": pid, "code": c["code"]}}, token=w.owner.token))["applyCoupon"]
    assert red["status"] == "REDEEMED" and await w.balance(pid) == before + 100


async def test_apply_coupon_needs_project_admin(world: World) -> None:
    w = world
    c = await w.coupon(code=unique("member"), percentOff=10)
    pid = await w.project()
    stranger = await sign_up(w.gql)
    ext = await w.gql.error(APPLY, {"i": {"projectId": pid, "code": c["code"]}}, token=stranger.token)
    assert ext["code"] == "NOT_FOUND"
    assert await w.times_redeemed(c["id"]) == 0


async def test_subscription_checkout_with_coupon(world: World) -> None:
    w = world
    plan = await create_plan(w.gql, w.admin, name="Coupon Checkout Sub", amount=2000)
    c = await w.coupon(
        code=unique("first"), amountOff={"amount": 500, "currency": "USD"}, duration="ONCE", bonusCredits="200"
    )
    pid = await w.project()
    sid = await checkout(w.gql, w.owner, pid, planId=plan, couponCode=c["code"])
    sess = w.fake.get(sid)
    assert sess["amount_total"] == 1500 and sess["discounts"][0]["promotion_code"] == c["stripePromotionCodeId"]
    before = await w.balance(pid)
    await w.send(*w.fake.complete_checkout(sid))
    stripe_sub = w.fake.get(str(w.fake.get(sid)["subscription"]))
    assert len(stripe_sub["discounts"]) == 1
    (row,) = await w.sql(
        "SELECT r.status, r.subscription_id, r.stripe_subscription_id, s.id AS sub FROM coupon_redemptions r"
        " JOIN subscriptions s ON s.stripe_subscription_id = r.stripe_subscription_id"
        " WHERE r.stripe_checkout_session_id = $1",
        sid,
    )
    assert row["status"] == "REDEEMED" and row["subscription_id"] == row["sub"]
    assert row["stripe_subscription_id"] == stripe_sub["id"]
    assert await w.balance(pid) == before + 200
    assert await w.times_redeemed(c["id"]) == 1
    actions = await w.sql(
        "SELECT action FROM audit_log WHERE project_id = $1 AND action LIKE 'payments.coupon.%' ORDER BY id",
        ids.decode("project", pid),
    )
    assert [a["action"] for a in actions] == ["payments.coupon.bonus", "payments.coupon.redeem"]
    # The subscription's first invoice was paid at the discounted price: its Payment says by how much.
    payments = (await w.gql.ok(PAYMENTS, {"p": pid}, token=w.owner.token))["payments"]["edges"]
    (paid,) = [e["node"] for e in payments if e["node"]["amount"]["amount"] == "1500"]
    assert paid["discount"] == {"amount": "500", "currency": "USD"}
