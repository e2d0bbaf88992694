"""Plans and subscriptions: checkout in subscription mode, credits per paid period, events in any
order, dunning (PAST_DUE -> grace -> FREE), proration at pinned instants, plan changes,
cancellation, trials and platform-admin overrides. The books are verified after every test."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.payments import dunning, inbox, proration, subscriptions
from ledgerx.domain.ratelimit import Limit
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_plan, deliver, stripe_settings
from tests.tenancy_helpers import add_member, create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
FEB1 = dt.datetime(2026, 2, 1, tzinfo=UTC)
MAR1 = dt.datetime(2026, 3, 1, tzinfo=UTC)


def unix(t: dt.datetime) -> int:
    return int(t.timestamp())


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(settings, fake)


class Clock:
    """One pinned instant for LedgerX (the payments clock) and for Stripe (the fake's time)."""

    def __init__(self, services: Services, fake: FakeStripe) -> None:
        self.fake = fake
        self.now = T0
        services.payments.clock = lambda: self.now
        self.at(T0)

    def at(self, when: dt.datetime) -> None:
        self.now = when
        self.fake.now = unix(when)


@dataclasses.dataclass
class World:
    admin: SignedIn
    owner: SignedIn
    project_id: str
    free: str
    pro: str
    enterprise: str
    pro_year: str
    enterprise_year: str
    clock: Clock
    projects: list[str]

    @property
    def puuid(self) -> Any:
        return ids.decode("project", self.project_id)


@pytest.fixture
async def world(gql: GQL, services: Services, settings: Settings, fake: FakeStripe) -> AsyncIterator[World]:
    clock = Clock(services, fake)
    admin = await make_platform_admin(gql, settings)
    # The catalog is global and the test database is shared by the session: one free plan at a time.
    await owner_sql(settings, "UPDATE plans SET archived_at = now() WHERE tier = 'FREE' AND archived_at IS NULL")
    free = await create_plan(gql, admin, name="Free", tier="FREE", amount=0, rate_limit={"burst": 5, "perSecond": 1})
    pro = await create_plan(
        gql,
        admin,
        name="Pro",
        amount=2000,
        included=1000,
        rate_limit={"burst": 50, "perSecond": 10},
        quotas={"api_calls": 100_000},
    )
    ent = await create_plan(gql, admin, name="Enterprise", tier="ENTERPRISE", amount=5000, included=3000)
    pro_year = await create_plan(gql, admin, name="Pro yearly", interval="YEAR", amount=20000, included=12000)
    ent_year = await create_plan(
        gql, admin, name="Enterprise yearly", tier="ENTERPRISE", interval="YEAR", amount=50000, included=36000
    )
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    w = World(admin, owner, pid, free, pro, ent, pro_year, ent_year, clock, [pid])
    try:
        yield w
        for p in w.projects:
            report = await verify_ledger(services.ledger, ids.decode("project", p))
            assert report.ok, report.mismatches
    finally:
        # The catalog is global: retire this test's plans so their small rate limits and quotas do
        # not become every other project's FREE plan for the rest of the session.
        await owner_sql(settings, "UPDATE plans SET archived_at = now() WHERE archived_at IS NULL")


async def send(
    client: httpx.AsyncClient, services: Services, events: list[dict[str, Any]], *, one_by_one: bool = False
) -> None:
    """Deliver, then process. The processor takes a batch oldest first (by Stripe's time);
    `one_by_one` processes each event as it arrives, so the processing order is the delivery order."""
    for ev in events:
        r = await deliver(client, ev)
        assert r.status_code == 200, r.text
        if one_by_one:
            await inbox.drain(services.payments)
    await inbox.drain(services.payments)


async def subscribe(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    fake: FakeStripe,
    w: World,
    plan: str,
    project_id: str | None = None,
) -> str:
    session_id = await checkout(gql, w.owner, project_id or w.project_id, planId=plan)
    await send(client, services, fake.complete_checkout(session_id))
    sub_id: str = fake.get(session_id)["subscription"]
    return sub_id


async def balance(settings: Settings, project_id: str) -> int:
    rows = await owner_sql(
        settings,
        "SELECT coalesce(sum(balance), 0)::bigint AS b FROM wallets WHERE project_id = $1",
        ids.decode("project", project_id),
    )
    return int(rows[0]["b"])


SUBSCRIPTION = """
query($p: ID!) { subscription(projectId: $p) {
  id status plan { id name } pendingPlan { id } pendingAt currentPeriodStart currentPeriodEnd trialEnd
  cancelAtPeriodEnd endedAt pastDueSince graceUntil inGracePeriod downgradedAt stripeSubscriptionId
} }
"""
EFFECTIVE = """
query($p: ID!) { effectivePlan(projectId: $p) {
  plan { id name tier } source rateLimit { burst perSecond } monthlyQuotas { metric limit } overrideReason
} }
"""
INVOICES = """
query($p: ID!) { invoices(projectId: $p) { edges { node {
  id kind status billingReason total { amount currency } amountPaid { amount } credits attemptCount
  nextPaymentAttempt periodStart periodEnd
  lines { description amount { amount currency } proration periodStart periodEnd planId }
} } } }
"""
CHANGE = """
mutation($i: ChangePlanInput!) { changePlan(input: $i) {
  immediate effectiveAt prorationAmount { amount currency } prorationCredits
  invoice { kind status total { amount } credits lines { description amount { amount } proration } }
  subscription { status plan { id } pendingPlan { id } pendingAt }
} }
"""


async def sub_state(gql: GQL, w: World, project_id: str | None = None) -> dict[str, Any]:
    data = await gql.ok(SUBSCRIPTION, {"p": project_id or w.project_id}, token=w.owner.token)
    result: dict[str, Any] = data["subscription"]
    return result


async def effective(gql: GQL, w: World, project_id: str | None = None) -> dict[str, Any]:
    data = await gql.ok(EFFECTIVE, {"p": project_id or w.project_id}, token=w.owner.token)
    result: dict[str, Any] = data["effectivePlan"]
    return result


def iso(t: dt.datetime) -> str:
    return t.isoformat()


async def test_subscription_checkout_grants_included_credits_each_period(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, world: World
) -> None:
    assert (await effective(gql, world))["source"] == "DEFAULT"
    assert (await effective(gql, world))["plan"]["id"] == world.free
    session_id = await checkout(gql, world.owner, world.project_id, planId=world.pro)
    (call,) = fake.calls_to("POST", "checkout/sessions")
    assert call.params["mode"] == "subscription"
    assert call.params["subscription_data"]["metadata"]["ledgerx_plan_id"] == world.pro
    assert "trial_period_days" not in call.params["subscription_data"]
    events = fake.complete_checkout(session_id)
    assert [e["type"] for e in events] == [
        "customer.subscription.created",
        "invoice.paid",
        "checkout.session.completed",
    ]
    await send(client, services, events)

    s = await sub_state(gql, world)
    assert s["status"] == "ACTIVE"
    assert s["plan"]["id"] == world.pro
    assert (s["currentPeriodStart"], s["currentPeriodEnd"]) == (iso(T0), iso(FEB1))
    assert await balance(settings, world.project_id) == 1000
    e = await effective(gql, world)
    assert (e["source"], e["plan"]["id"]) == ("SUBSCRIPTION", world.pro)
    assert e["rateLimit"] == {"burst": 50, "perSecond": 10.0}
    assert await subscriptions.plan_quotas(services.payments, world.puuid) == {"api_calls": 100_000}
    assert await services.limits.project_limit(world.puuid) == Limit(50, 10.0)

    inv = (await gql.ok(INVOICES, {"p": world.project_id}, token=world.owner.token))["invoices"]["edges"]
    (node,) = [i["node"] for i in inv]
    assert (node["kind"], node["status"], node["billingReason"], node["credits"]) == (
        "SUBSCRIPTION",
        "PAID",
        "subscription_create",
        "1000",
    )
    assert node["total"] == {"amount": "2000", "currency": "USD"}
    assert node["lines"][0]["amount"]["amount"] == "2000"
    assert node["lines"][0]["planId"] == world.pro
    # A project with a subscription changes plans instead of checking out again.
    err = await gql.error(
        "mutation($i: CreateCheckoutSessionInput!) { createCheckoutSession(input: $i) { id } }",
        {
            "i": {
                "projectId": world.project_id,
                "planId": world.enterprise,
                "successUrl": "https://a.b/",
                "cancelUrl": "https://a.b/",
            }
        },
        token=world.owner.token,
    )
    assert err["code"] == "CONFLICT"

    # The next period: its paid invoice grants the credits once, however often it is delivered.
    world.clock.at(FEB1)
    renewal = fake.renew(fake.get(session_id)["subscription"])
    await send(client, services, renewal + renewal)
    assert await balance(settings, world.project_id) == 2000
    s = await sub_state(gql, world)
    assert (s["currentPeriodStart"], s["currentPeriodEnd"]) == (iso(FEB1), iso(MAR1))
    keys = await owner_sql(
        settings, "SELECT idempotency_key FROM ledger_transactions WHERE project_id = $1 ORDER BY id", world.puuid
    )
    assert [k["idempotency_key"].split(":")[:2] for k in keys] == [["stripe", "invoice"]] * 2

    # Invoices and payments are for project admins; the subscription for every member.
    member = await add_member(gql, world.owner, world.project_id, "VIEWER")
    assert (await gql.ok(SUBSCRIPTION, {"p": world.project_id}, token=member.token))["subscription"][
        "status"
    ] == "ACTIVE"
    assert (await gql.error(INVOICES, {"p": world.project_id}, token=member.token))["code"] == "FORBIDDEN"
    payments = await gql.ok(
        "query($p: ID!) { payments(projectId: $p) { edges { node { kind amount { amount } credits } } } }",
        {"p": world.project_id},
        token=world.owner.token,
    )
    assert [p["node"] for p in payments["payments"]["edges"]] == [
        {"kind": "SUBSCRIPTION", "amount": {"amount": "2000"}, "credits": "1000"},
        {"kind": "SUBSCRIPTION", "amount": {"amount": "2000"}, "credits": "1000"},
    ]


def scenario(fake: FakeStripe, clock: Clock, sub_id: str) -> list[dict[str, Any]]:
    """A subscription's life after checkout, as Stripe tells it: cancel at period end, undo it,
    renew, fail the next renewal, pay it on retry."""
    sub = fake.get(sub_id)
    events: list[dict[str, Any]] = []
    clock.at(T0 + dt.timedelta(days=1))
    sub.update(cancel_at_period_end=True, canceled_at=fake.time())
    events.append(fake.event("customer.subscription.updated", sub))
    clock.at(T0 + dt.timedelta(days=2))
    sub.update(cancel_at_period_end=False, canceled_at=None)
    events.append(fake.event("customer.subscription.updated", sub))
    clock.at(FEB1)
    events += fake.renew(sub_id)
    clock.at(MAR1)
    events += fake.renew(sub_id, pay=False)
    failed = events[-2]["data"]["object"]["id"]
    clock.at(MAR1 + dt.timedelta(days=2))
    events += fake.pay_invoice(failed)
    return events


async def test_events_in_any_order_converge_to_the_same_state(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, world: World
) -> None:
    orders = ["in order", "reversed", "shuffled 1", "shuffled 2", "shuffled 3"]
    finals = []
    for n, order in enumerate(orders):
        pid = world.project_id if n == 0 else await create_project(gql, world.owner)
        if n:
            world.projects.append(pid)
        world.clock.at(T0)
        session_id = await checkout(gql, world.owner, pid, planId=world.pro)
        first = fake.complete_checkout(session_id)
        sub_id = fake.get(session_id)["subscription"]
        events = first + scenario(fake, world.clock, sub_id)
        if order == "reversed":
            events.reverse()
        elif order.startswith("shuffled"):
            random.Random(n).shuffle(events)
        # Every event twice, the duplicates anywhere.
        events = events + random.Random(100 + n).sample(events, len(events))
        await send(client, services, events, one_by_one=True)
        world.clock.at(MAR1 + dt.timedelta(days=3))
        s = await sub_state(gql, world, pid)
        invoices = (await gql.ok(INVOICES, {"p": pid}, token=world.owner.token))["invoices"]["edges"]
        finals.append(
            {
                "status": s["status"],
                "plan": s["plan"]["id"],
                "cancelAtPeriodEnd": s["cancelAtPeriodEnd"],
                "period": (s["currentPeriodStart"], s["currentPeriodEnd"]),
                "pastDueSince": s["pastDueSince"],
                "invoices": sorted((i["node"]["status"], i["node"]["attemptCount"]) for i in invoices),
                "balance": await balance(settings, pid),
            }
        )
    expected = {
        "status": "ACTIVE",
        "plan": world.pro,
        "cancelAtPeriodEnd": False,
        "period": (iso(MAR1), iso(dt.datetime(2026, 4, 1, tzinfo=UTC))),
        "pastDueSince": None,
        "invoices": [("PAID", 1), ("PAID", 1), ("PAID", 2)],
        "balance": 3000,
    }
    for order, final in zip(orders, finals, strict=True):
        assert final == expected, order


async def test_an_older_event_never_overwrites_newer_state(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, world: World
) -> None:
    sub_id = await subscribe(gql, client, services, fake, world, world.pro)
    sub = fake.get(sub_id)
    world.clock.at(T0 + dt.timedelta(hours=5))
    sub["cancel_at_period_end"] = True
    newer = fake.event("customer.subscription.updated", sub)
    sub["cancel_at_period_end"] = False
    older = fake.event("customer.subscription.updated", sub, created=unix(T0 + dt.timedelta(hours=4)))
    await send(client, services, [newer])
    await send(client, services, [older])
    assert (await sub_state(gql, world))["cancelAtPeriodEnd"] is True
    rows = await owner_sql(
        services.settings, "SELECT result FROM webhook_events WHERE stripe_event_id = $1", older["id"]
    )
    assert rows[0]["result"].startswith("stale")
    # A deletion is final: no snapshot from before it revives the subscription.
    world.clock.at(T0 + dt.timedelta(hours=6))
    alive = {**sub, "status": "active", "cancel_at_period_end": False}
    revive = fake.event("customer.subscription.updated", alive, created=unix(T0 + dt.timedelta(hours=5, minutes=30)))
    deleted = fake.end_subscription(sub_id)
    await send(client, services, [deleted, revive], one_by_one=True)
    s = await sub_state(gql, world)
    assert s["status"] == "CANCELED"
    assert (await effective(gql, world))["source"] == "DEFAULT"


async def test_a_failed_invoice_walks_past_due_then_grace_then_the_free_plan(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, world: World
) -> None:
    sub_id = await subscribe(gql, client, services, fake, world, world.pro)
    world.clock.at(FEB1)
    failed = fake.renew(sub_id, pay=False)
    invoice_id = failed[0]["data"]["object"]["id"]
    await send(client, services, failed)
    world.clock.at(FEB1 + dt.timedelta(hours=1))
    s = await sub_state(gql, world)
    grace_end = FEB1 + dt.timedelta(days=7)
    assert (s["status"], s["pastDueSince"], s["graceUntil"], s["inGracePeriod"]) == (
        "PAST_DUE",
        iso(FEB1),
        iso(grace_end),
        True,
    )
    assert (await effective(gql, world))["plan"]["id"] == world.pro  # still Pro during the grace period

    # Stripe retries (and fails) on its schedule; LedgerX records the attempts, the grace holds.
    world.clock.at(FEB1 + dt.timedelta(days=3))
    await send(client, services, fake.fail_invoice(invoice_id))
    inv = (await gql.ok(INVOICES, {"p": world.project_id}, token=world.owner.token))["invoices"]["edges"][0]["node"]
    assert (inv["status"], inv["attemptCount"]) == ("OPEN", 2)
    assert inv["nextPaymentAttempt"] == iso(FEB1 + dt.timedelta(days=6))
    assert (await sub_state(gql, world))["graceUntil"] == iso(grace_end)

    world.clock.at(grace_end - dt.timedelta(seconds=1))
    assert await dunning.run_dunning(services.payments) == 0
    assert (await effective(gql, world))["plan"]["id"] == world.pro

    topic = subscriptions.topic(world.puuid)
    async with services.events.subscribe(topic) as feed:
        world.clock.at(grace_end + dt.timedelta(seconds=1))
        assert await dunning.run_dunning(services.payments) == 1
        event = await asyncio.wait_for(anext(feed), timeout=5)
    assert event["type"] == "subscription.downgraded"
    assert event["planId"] == world.free
    assert await dunning.run_dunning(services.payments) == 0  # announced once
    e = await effective(gql, world)
    assert (e["source"], e["plan"]["id"], e["rateLimit"]) == ("DEFAULT", world.free, {"burst": 5, "perSecond": 1.0})
    assert await subscriptions.plan_limit(services.payments, world.puuid) == Limit(5, 1.0)
    s = await sub_state(gql, world)
    assert (s["status"], s["inGracePeriod"], s["downgradedAt"]) == (
        "PAST_DUE",
        False,
        iso(grace_end + dt.timedelta(seconds=1)),
    )
    rows = await owner_sql(
        settings,
        "SELECT count(*) AS n FROM audit_log WHERE project_id = $1 AND action = 'subscription.downgrade_to_free'",
        world.puuid,
    )
    assert rows[0]["n"] == 1

    # Paying late restores the plan, and the period's credits are granted then.
    assert await balance(settings, world.project_id) == 1000
    world.clock.at(grace_end + dt.timedelta(days=1))
    await send(client, services, fake.pay_invoice(invoice_id))
    s = await sub_state(gql, world)
    assert (s["status"], s["pastDueSince"], s["downgradedAt"]) == ("ACTIVE", None, None)
    assert (await effective(gql, world))["plan"]["id"] == world.pro
    assert await balance(settings, world.project_id) == 2000


# -- proration at pinned instants --------------------------------------------------------------------------

PRO_M = proration.PlanTerms(2000, "MONTH", 1000, "USD")
ENT_M = proration.PlanTerms(5000, "MONTH", 3000, "USD")
PRO_Y = proration.PlanTerms(20000, "YEAR", 12000, "USD")
ENT_Y = proration.PlanTerms(50000, "YEAR", 36000, "USD")


@pytest.mark.parametrize(
    ("old", "new", "start", "end", "at", "immediate", "amount", "credits"),
    [
        # Monthly (January: 31 days). Upgrade with 20.5 days left: 3000 x 20.5/31 = 1983.87 -> 1984.
        (PRO_M, ENT_M, T0, FEB1, dt.datetime(2026, 1, 11, 12, tzinfo=UTC), True, 1984, 1323),
        # Exactly half the period left: 1500.00, credits 1000.
        (PRO_M, ENT_M, T0, FEB1, dt.datetime(2026, 1, 16, 12, tzinfo=UTC), True, 1500, 1000),
        # At the start: the whole difference; one second before the end: nothing left to the cent.
        (PRO_M, ENT_M, T0, FEB1, T0, True, 3000, 2000),
        (PRO_M, ENT_M, T0, FEB1, FEB1 - dt.timedelta(seconds=1), True, 0, 0),
        # February (28 days), 10 days left: 3000 x 10/28 = 1071.43 -> 1071; credits 714.29 -> 714.
        (PRO_M, ENT_M, FEB1, MAR1, dt.datetime(2026, 2, 19, tzinfo=UTC), True, 1071, 714),
        # Downgrade: at the period end, nothing charged now.
        (ENT_M, PRO_M, T0, FEB1, dt.datetime(2026, 1, 11, 12, tzinfo=UTC), False, 0, 0),
        # Yearly (2026: 365 days), 275 days left on April 1: 30000 x 275/365 = 22602.74 -> 22603.
        (
            PRO_Y,
            ENT_Y,
            T0,
            dt.datetime(2027, 1, 1, tzinfo=UTC),
            dt.datetime(2026, 4, 1, tzinfo=UTC),
            True,
            22603,
            18082,
        ),
        # Leap year (2028: 366 days), 306 days left on March 1: 30000 x 306/366 = 25081.97 -> 25082.
        (
            PRO_Y,
            ENT_Y,
            dt.datetime(2028, 1, 1, tzinfo=UTC),
            dt.datetime(2029, 1, 1, tzinfo=UTC),
            dt.datetime(2028, 3, 1, tzinfo=UTC),
            True,
            25082,
            20066,
        ),
        (ENT_Y, PRO_Y, T0, dt.datetime(2027, 1, 1, tzinfo=UTC), dt.datetime(2026, 4, 1, tzinfo=UTC), False, 0, 0),
        # A change of interval applies at the period end too.
        (PRO_M, PRO_Y, T0, FEB1, dt.datetime(2026, 1, 11, tzinfo=UTC), False, 0, 0),
    ],
)
def test_proration_amounts_at_pinned_instants(
    old: proration.PlanTerms,
    new: proration.PlanTerms,
    start: dt.datetime,
    end: dt.datetime,
    at: dt.datetime,
    immediate: bool,
    amount: int,
    credits: int,
) -> None:
    change = proration.plan_change(old, new, start, end, at)
    assert (change.immediate, change.amount, change.credits) == (immediate, amount, credits)
    assert change.effective_at == (at if immediate else end)


def test_proration_rounds_half_up_to_the_cent() -> None:
    half = dt.datetime(2026, 1, 16, 12, tzinfo=UTC)  # exactly half of January left
    assert proration.prorate(1, T0, FEB1, half) == 1  # 0.5 -> 1
    assert proration.prorate(3, T0, FEB1, half) == 2  # 1.5 -> 2
    assert proration.prorate(-3, T0, FEB1, half) == -2  # halves away from zero
    assert proration.prorate(1000, T0, FEB1, FEB1 + dt.timedelta(days=1)) == 0
    assert proration.prorate(1000, T0, FEB1, T0 - dt.timedelta(days=1)) == 1000
    assert proration.plan_change(PRO_M, ENT_M, T0, FEB1, half, trialing=True).amount == 0


async def test_upgrade_now_with_a_prorated_charge_and_downgrade_at_period_end(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, world: World
) -> None:
    sub_id = await subscribe(gql, client, services, fake, world, world.pro)
    stale = fake.event("customer.subscription.updated", fake.get(sub_id), created=unix(T0 + dt.timedelta(days=2)))

    world.clock.at(dt.datetime(2026, 1, 11, 12, tzinfo=UTC))
    up = (
        await gql.ok(
            CHANGE, {"i": {"projectId": world.project_id, "planId": world.enterprise}}, token=world.owner.token
        )
    )["changePlan"]
    assert up["immediate"] is True
    assert up["effectiveAt"] == iso(world.clock.now)
    assert up["prorationAmount"] == {"amount": "1984", "currency": "USD"}
    assert up["prorationCredits"] == "1323"
    assert up["subscription"]["plan"]["id"] == world.enterprise
    inv = up["invoice"]
    assert (inv["kind"], inv["status"], inv["total"], inv["credits"]) == (
        "PRORATION",
        "PAID",
        {"amount": "1984"},
        "1323",
    )
    (line,) = inv["lines"]
    assert line["amount"] == {"amount": "1984"}
    assert line["proration"] is True
    assert (
        line["description"] == "Upgrade from Pro to Enterprise, prorated for 20d 12h 0m of 31d 0h 0m left in the period"
    )
    # Stripe: the charge went through as a one-off invoice; the item now bills Enterprise, without
    # Stripe's own proration.
    (item_call,) = fake.calls_to("POST", "invoiceitems")
    assert item_call.params["amount"] == "1984"
    (update,) = [c for c in fake.calls_to("POST", f"subscriptions/{sub_id}") if "items" in c.params]
    assert update.params["proration_behavior"] == "none"
    assert fake.get(sub_id)["items"]["data"][0]["price"]["id"] == fake.get(update.params["items"][0]["price"])["id"]
    assert await balance(settings, world.project_id) == 1000 + 1323

    # Stripe's own events about the charge and the change grant nothing more; a snapshot from
    # before the change, delivered late, does not undo it.
    paid = fake.event("invoice.paid", fake.of_type("invoice")[-1])
    changed = fake.event("customer.subscription.updated", fake.get(sub_id))
    await send(client, services, [paid, stale, changed, paid])
    assert await balance(settings, world.project_id) == 1000 + 1323
    assert (await sub_state(gql, world))["plan"]["id"] == world.enterprise
    payments = await gql.ok(
        "query($p: ID!) { payments(projectId: $p) { edges { node { amount { amount } credits } } } }",
        {"p": world.project_id},
        token=world.owner.token,
    )
    assert sorted(p["node"]["amount"]["amount"] for p in payments["payments"]["edges"]) == ["1984", "2000"]

    # Downgrade: nothing now, Pro from the period end.
    world.clock.at(dt.datetime(2026, 1, 20, tzinfo=UTC))
    down = (await gql.ok(CHANGE, {"i": {"projectId": world.project_id, "planId": world.pro}}, token=world.owner.token))[
        "changePlan"
    ]
    assert (down["immediate"], down["effectiveAt"], down["prorationAmount"]["amount"], down["invoice"]) == (
        False,
        iso(FEB1),
        "0",
        None,
    )
    assert (down["subscription"]["plan"]["id"], down["subscription"]["pendingPlan"]["id"]) == (
        world.enterprise,
        world.pro,
    )
    # Stripe keeps billing Enterprise until the period end, then Pro (a subscription schedule).
    (schedule,) = fake.of_type("subscription_schedule")
    assert schedule["phases"][0]["end_date"] == unix(FEB1)
    assert fake.get(schedule["phases"][1]["items"][0]["price"])["unit_amount"] == 2000
    assert fake.get(sub_id)["items"]["data"][0]["price"]["unit_amount"] == 5000
    assert (await effective(gql, world))["plan"]["id"] == world.enterprise
    world.clock.at(FEB1)
    assert (await effective(gql, world))["plan"]["id"] == world.pro  # at the period end, before any webhook
    # The renewal bills Pro and grants Pro's credits; the new period folds the pending change in.
    await send(client, services, fake.renew(sub_id))
    s = await sub_state(gql, world)
    assert (s["plan"]["id"], s["pendingPlan"]) == (world.pro, None)
    assert await balance(settings, world.project_id) == 1000 + 1323 + 1000


async def test_yearly_upgrade_and_downgrade(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, world: World
) -> None:
    await subscribe(gql, client, services, fake, world, world.pro_year)
    assert (await sub_state(gql, world))["currentPeriodEnd"] == iso(dt.datetime(2027, 1, 1, tzinfo=UTC))
    world.clock.at(dt.datetime(2026, 4, 1, tzinfo=UTC))
    up = (
        await gql.ok(
            CHANGE, {"i": {"projectId": world.project_id, "planId": world.enterprise_year}}, token=world.owner.token
        )
    )["changePlan"]
    assert (up["immediate"], up["prorationAmount"]["amount"], up["prorationCredits"]) == (True, "22603", "18082")
    assert await balance(settings, world.project_id) == 12000 + 18082
    world.clock.at(dt.datetime(2026, 6, 1, tzinfo=UTC))
    down = (
        await gql.ok(CHANGE, {"i": {"projectId": world.project_id, "planId": world.pro_year}}, token=world.owner.token)
    )["changePlan"]
    assert (down["immediate"], down["effectiveAt"], down["prorationAmount"]["amount"]) == (
        False,
        iso(dt.datetime(2027, 1, 1, tzinfo=UTC)),
        "0",
    )
    # Changing to a monthly plan also waits for the end of the paid year; it replaces the
    # change planned before (that schedule is released).
    month = (
        await gql.ok(CHANGE, {"i": {"projectId": world.project_id, "planId": world.pro}}, token=world.owner.token)
    )["changePlan"]
    assert (month["immediate"], month["subscription"]["pendingPlan"]["id"]) == (False, world.pro)
    first, second = fake.of_type("subscription_schedule")
    assert (first["status"], second["status"]) == ("released", "active")
    # Going back to the current plan drops the planned change.
    back = (
        await gql.ok(
            CHANGE, {"i": {"projectId": world.project_id, "planId": world.enterprise_year}}, token=world.owner.token
        )
    )["changePlan"]
    assert (back["immediate"], back["subscription"]["pendingPlan"], back["prorationAmount"]["amount"]) == (
        True,
        None,
        "0",
    )
    assert second["status"] == "released"


async def test_a_declined_upgrade_changes_nothing(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, world: World
) -> None:
    sub_id = await subscribe(gql, client, services, fake, world, world.pro)
    world.clock.at(dt.datetime(2026, 1, 10, tzinfo=UTC))
    fake.decline_payments = True
    err = await gql.error(
        CHANGE, {"i": {"projectId": world.project_id, "planId": world.enterprise}}, token=world.owner.token
    )
    assert (err["code"], err["reason"]) == ("CONFLICT", "PAYMENT_FAILED")
    assert (await sub_state(gql, world))["plan"]["id"] == world.pro
    assert not [c for c in fake.calls_to("POST", f"subscriptions/{sub_id}") if "items" in c.params]
    assert [i["status"] for i in fake.of_type("invoice") if i["billing_reason"] == "manual"] == ["void"]
    assert await balance(settings, world.project_id) == 1000
    # Members cannot change plans; nor can anyone without a subscription.
    member = await add_member(gql, world.owner, world.project_id, "MEMBER")
    assert (
        await gql.error(CHANGE, {"i": {"projectId": world.project_id, "planId": world.enterprise}}, token=member.token)
    )["code"] == "FORBIDDEN"
    other = await create_project(gql, world.owner)
    world.projects.append(other)
    assert (await gql.error(CHANGE, {"i": {"projectId": other, "planId": world.enterprise}}, token=world.owner.token))[
        "code"
    ] == "CONFLICT"


CANCEL = "mutation($i: CancelSubscriptionInput!) { cancelSubscription(input: $i) { status cancelAtPeriodEnd endedAt } }"


async def test_cancel_at_period_end_and_at_once(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, world: World
) -> None:
    sub_id = await subscribe(gql, client, services, fake, world, world.pro)
    world.clock.at(dt.datetime(2026, 1, 15, tzinfo=UTC))
    c = (await gql.ok(CANCEL, {"i": {"projectId": world.project_id}}, token=world.owner.token))["cancelSubscription"]
    assert (c["status"], c["cancelAtPeriodEnd"]) == ("ACTIVE", True)
    assert fake.get(sub_id)["cancel_at_period_end"] is True
    assert (await effective(gql, world))["plan"]["id"] == world.pro
    world.clock.at(FEB1)
    assert (await effective(gql, world))["plan"]["id"] == world.free
    await send(client, services, [fake.end_subscription(sub_id)])
    assert (await sub_state(gql, world))["status"] == "CANCELED"

    other = await create_project(gql, world.owner)
    world.projects.append(other)
    world.clock.at(T0)
    other_sub = await subscribe(gql, client, services, fake, world, world.enterprise, other)
    world.clock.at(dt.datetime(2026, 1, 3, tzinfo=UTC))
    c = (await gql.ok(CANCEL, {"i": {"projectId": other, "atPeriodEnd": False}}, token=world.owner.token))[
        "cancelSubscription"
    ]
    assert (c["status"], c["endedAt"]) == ("CANCELED", iso(dt.datetime(2026, 1, 3, tzinfo=UTC)))
    assert fake.get(other_sub)["status"] == "canceled"
    assert (await effective(gql, world, other))["plan"]["id"] == world.free
    # A new subscription may start after the old one ended (no second trial).
    session = await checkout(gql, world.owner, other, planId=world.pro)
    assert session.startswith("cs_test")


async def test_trials_start_with_the_included_credits_and_upgrade_free(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, world: World
) -> None:
    trial_plan = await create_plan(gql, world.admin, name="Starter", amount=1000, included=200, trial_days=14)
    await subscribe(gql, client, services, fake, world, trial_plan)
    (call,) = fake.calls_to("POST", "checkout/sessions")
    assert call.params["subscription_data"]["trial_period_days"] == "14"
    s = await sub_state(gql, world)
    assert (s["status"], s["trialEnd"]) == ("TRIALING", iso(T0 + dt.timedelta(days=14)))
    assert await balance(settings, world.project_id) == 200
    world.clock.at(dt.datetime(2026, 1, 5, tzinfo=UTC))
    up = (await gql.ok(CHANGE, {"i": {"projectId": world.project_id, "planId": world.pro}}, token=world.owner.token))[
        "changePlan"
    ]
    assert (up["immediate"], up["prorationAmount"]["amount"], up["invoice"]) == (True, "0", None)
    assert (await effective(gql, world))["plan"]["id"] == world.pro


OVERRIDE = """
mutation($i: OverridePlanInput!) { overridePlan(input: $i) {
  plan { id } source rateLimit { burst perSecond } monthlyQuotas { metric limit } overrideReason
} }
"""


async def test_platform_admins_override_a_projects_plan(gql: GQL, services: Services, world: World) -> None:
    i = {
        "projectId": world.project_id,
        "planId": world.enterprise,
        "rateLimit": {"burst": 999, "perSecond": 50},
        "monthlyQuotas": [{"metric": "api_calls", "limit": "5"}],
        "reason": "design partner",
    }
    assert (await gql.error(OVERRIDE, {"i": i}, token=world.owner.token))["code"] == "FORBIDDEN"
    o = (await gql.ok(OVERRIDE, {"i": i}, token=world.admin.token))["overridePlan"]
    assert (o["plan"]["id"], o["source"], o["overrideReason"]) == (world.enterprise, "OVERRIDE", "design partner")
    assert o["rateLimit"] == {"burst": 999, "perSecond": 50.0}
    assert o["monthlyQuotas"] == [{"metric": "api_calls", "limit": "5"}]
    assert await services.limits.project_limit(world.puuid) == Limit(999, 50.0)
    assert await subscriptions.plan_quotas(services.payments, world.puuid) == {"api_calls": 5}
    # An expiry in the past is refused; clearing restores the default plan.
    err = await gql.error(OVERRIDE, {"i": {**i, "expiresAt": "2025-01-01T00:00:00+00:00"}}, token=world.admin.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "expiresAt")
    cleared = (await gql.ok(OVERRIDE, {"i": {"projectId": world.project_id}}, token=world.admin.token))["overridePlan"]
    assert (cleared["source"], cleared["plan"]["id"]) == ("DEFAULT", world.free)
    assert await services.limits.project_limit(world.puuid) == Limit(5, 1.0)
    rows = await owner_sql(
        services.settings,
        "SELECT action FROM audit_log WHERE project_id = $1 AND action LIKE 'plan.override%' ORDER BY at",
        world.puuid,
    )
    assert [r["action"] for r in rows] == ["plan.override", "plan.override_clear"]


async def test_catalog_plans_sync_with_stripe(gql: GQL, fake: FakeStripe, world: World) -> None:
    plans = (await gql.ok("{ plans { id tier interval price { amount } stripePriceId } }"))["plans"]
    by_id = {p["id"]: p for p in plans}
    assert by_id[world.free]["stripePriceId"] is None  # nothing to pay for
    price = fake.get(by_id[world.pro_year]["stripePriceId"])
    assert (price["unit_amount"], price["recurring"]["interval"]) == (20000, "year")
    upd = (
        await gql.ok(
            "mutation($i: UpdatePlanInput!) { updatePlan(input: $i) { price { amount } stripePriceId includedCredits } }",
            {"i": {"id": world.pro, "price": {"amount": 2500, "currency": "usd"}, "includedCredits": "1500"}},
            token=world.admin.token,
        )
    )["updatePlan"]
    assert upd["price"]["amount"] == "2500"
    assert upd["includedCredits"] == "1500"
    assert fake.get(by_id[world.pro]["stripePriceId"])["active"] is False
    assert fake.get(upd["stripePriceId"])["unit_amount"] == 2500
    err = await gql.error(
        "mutation($i: CreatePlanInput!) { createPlan(input: $i) { id } }",
        {"i": {"name": "x", "tier": "FREE", "interval": "MONTH", "price": {"amount": 100, "currency": "usd"}}},
        token=world.admin.token,
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "price.amount")
    archived = await gql.ok(
        "mutation($id: ID!) { archivePlan(id: $id) { archived } }", {"id": world.enterprise}, token=world.admin.token
    )
    assert archived["archivePlan"]["archived"] is True
    assert world.enterprise not in {p["id"] for p in (await gql.ok("{ plans { id } }"))["plans"]}
    assert world.enterprise in {p["id"] for p in (await gql.ok("{ plans(includeArchived: true) { id } }"))["plans"]}
