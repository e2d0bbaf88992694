"""Entitlements through a subscription's life (issue #17: "the effective value follows plan
changes, trials, grace and downgrades"), driven as tests/test_payments_subscriptions.py drives
payments: checkout and Stripe's webhooks from the fake Stripe, the payments clock pinned.

Every check goes through GraphQL `entitlement(projectId, featureKey)`, so through the instance's
check cache (domain/entitlements/checks.py). An entry ends at its TTL (real time) and at the next
instant the answers change by themselves on the payments clock (a grace or period end). Where an
answer must change at such an instant, the payments clock *runs* from just before it at real speed,
as the wall clock does in production, and the test waits for it: only an entry bounded by that
instant explains a flip well inside the TTL; `test_a_pinned_clock_jump_past_grace_ends_the_cached_answer`
shows a jump of the pinned clock alone ends it too.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.entitlements.checks import TTL_SECONDS
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.payments import inbox
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.fake_stripe import FakeStripe, checkout, deliver, stripe_settings
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

UTC = dt.UTC
# Subscriptions start mid-month, so a period's end (PERIOD_END) is never the monthly reset of the
# METERED feature (FEB1), which also ends the checks' entries: each instant is tested on its own.
T0 = dt.datetime(2026, 1, 15, tzinfo=UTC)
FEB1 = dt.datetime(2026, 2, 1, tzinfo=UTC)
PERIOD_END = dt.datetime(2026, 2, 15, tzinfo=UTC)
GRACE_END = PERIOD_END + dt.timedelta(days=7)  # settings.subscription_grace_period after the failed renewal

# How long before an instant the running clock starts: time for a check well before the instant,
# and a flip after it far inside the checks' TTL.
LEAD = 1.0
assert LEAD * 2 < TTL_SECONDS

# What each plan grants: (sso's hasAccess, the METERED api_calls feature's limit).
FREE_GRANTS = (False, "10")
STARTER_GRANTS = (False, "100")
PRO_GRANTS = (True, "1000")

CREATE_PLAN = "mutation($i: CreatePlanInput!) { createPlan(input: $i) { id stripePriceId } }"
ENTITLEMENT = """
query($p: ID!, $k: String!) { entitlement(projectId: $p, featureKey: $k) {
  featureKey type hasAccess limit usage remaining config resetsAt
} }
"""
SUBSCRIPTION = """
query($p: ID!) { subscription(projectId: $p) {
  status plan { id } pendingPlan { id } trialEnd graceUntil inGracePeriod downgradedAt
} }
"""
EFFECTIVE = "query($p: ID!) { effectivePlan(projectId: $p) { plan { id } source } }"
CHANGE = """
mutation($i: ChangePlanInput!) { changePlan(input: $i) {
  immediate effectiveAt subscription { plan { id } pendingPlan { id } }
} }
"""
CANCEL = "mutation($i: CancelSubscriptionInput!) { cancelSubscription(input: $i) { status cancelAtPeriodEnd } }"


def unix(t: dt.datetime) -> int:
    return int(t.timestamp())


def iso(t: dt.datetime) -> str:
    return t.isoformat()


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(settings, fake)


class Clock:
    """The payments clock and the fake Stripe's time: pinned at an instant (`at`), or running from
    one at real speed (`run_from`), in step with the `time.monotonic()` the check cache counts in."""

    def __init__(self, services: Services, fake: FakeStripe) -> None:
        self.fake = fake
        self.origin = T0
        self.started: float | None = None
        services.payments.clock = self.now
        self.at(T0)

    def now(self) -> dt.datetime:
        if self.started is None:
            return self.origin
        return self.origin + dt.timedelta(seconds=time.monotonic() - self.started)

    def at(self, when: dt.datetime) -> None:
        self.origin, self.started = when, None
        self.fake.now = unix(when)

    def run_from(self, when: dt.datetime) -> None:
        self.origin, self.started = when, time.monotonic()
        self.fake.now = unix(when)

    async def until_past(self, when: dt.datetime) -> None:
        """Wait (in real time) for the running clock to pass `when`."""
        assert self.started is not None, "the clock is pinned"
        await asyncio.sleep(max((when - self.now()).total_seconds(), 0.0) + 0.05)
        assert self.now() > when


@dataclasses.dataclass
class Life:
    admin: SignedIn
    owner: SignedIn
    project_id: str
    free: str
    starter: str
    pro: str
    pro_trial: str
    prices: dict[str, str]  # plan id -> its Stripe price id
    clock: Clock


def features(sso: bool, api_calls: int) -> list[dict[str, Any]]:
    """A plan's entitlements: `sso` only when granted (a key the plan does not name denies), and a
    monthly METERED api_calls feature."""
    out: list[dict[str, Any]] = [
        {"featureKey": "api_calls", "type": "METERED", "metricKey": "api_calls", "limit": str(api_calls)}
    ]
    if sso:
        out.append({"featureKey": "sso", "type": "BOOLEAN"})
    return out


async def create_plan(
    gql: GQL, admin: SignedIn, tag: str, tier: str, amount: int, entitlements: list[dict[str, Any]], trial_days: int = 0
) -> tuple[str, str | None]:
    i = {
        # The catalog is global to the session's database: names of this test only.
        "name": f"{tag} {secrets.token_hex(4)}",
        "tier": tier,
        "interval": "MONTH",
        "price": {"amount": amount, "currency": "USD"},
        "includedCredits": str(amount // 2),
        "trialDays": trial_days,
        "entitlements": entitlements,
    }
    made = (await gql.ok(CREATE_PLAN, {"i": i}, token=admin.token))["createPlan"]
    return str(made["id"]), made["stripePriceId"]


@pytest.fixture
async def life(gql: GQL, services: Services, settings: Settings, fake: FakeStripe) -> AsyncIterator[Life]:
    clock = Clock(services, fake)
    admin = await make_platform_admin(gql, settings)
    # One free plan at a time (the default of every project without a subscription): this test's.
    await owner_sql(settings, "UPDATE plans SET archived_at = now() WHERE tier = 'FREE' AND archived_at IS NULL")
    free, _ = await create_plan(gql, admin, "Free", "FREE", 0, features(sso=False, api_calls=10))
    starter, starter_price = await create_plan(gql, admin, "Starter", "PRO", 1000, features(sso=False, api_calls=100))
    pro, pro_price = await create_plan(gql, admin, "Pro", "PRO", 2000, features(sso=True, api_calls=1000))
    pro_trial, _ = await create_plan(
        gql, admin, "Pro trial", "PRO", 2000, features(sso=True, api_calls=1000), trial_days=14
    )
    assert starter_price is not None and pro_price is not None
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    w = Life(admin, owner, pid, free, starter, pro, pro_trial, {starter: starter_price, pro: pro_price}, clock)
    try:
        yield w
        report = await verify_ledger(services.ledger, ids.decode("project", pid))
        assert report.ok, report.mismatches
    finally:
        # Retire this test's plans: its free plan must not become other tests' default.
        await owner_sql(
            settings,
            "UPDATE plans SET archived_at = now() WHERE id = ANY($1::uuid[]) AND archived_at IS NULL",
            [ids.decode("plan", p) for p in (free, starter, pro, pro_trial)],
        )


async def send(client: httpx.AsyncClient, services: Services, events: list[dict[str, Any]]) -> None:
    """Deliver Stripe's events to the webhook endpoint, then process them (as the worker would)."""
    for ev in events:
        r = await deliver(client, ev)
        assert r.status_code == 200, r.text
    await inbox.drain(services.payments)


async def subscribe(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, w: Life, plan: str
) -> str:
    session_id = await checkout(gql, w.owner, w.project_id, planId=plan)
    await send(client, services, fake.complete_checkout(session_id))
    sub_id: str = fake.get(session_id)["subscription"]
    return sub_id


async def entitlement(gql: GQL, w: Life, key: str) -> dict[str, Any]:
    data: dict[str, Any] = (await gql.ok(ENTITLEMENT, {"p": w.project_id, "k": key}, token=w.owner.token))[
        "entitlement"
    ]
    return data


async def grants(gql: GQL, w: Life) -> tuple[bool, str | None]:
    """(sso's hasAccess, api_calls' limit) as the project's checks answer now."""
    sso = await entitlement(gql, w, "sso")
    calls = await entitlement(gql, w, "api_calls")
    assert (sso["type"], calls["type"]) == ("BOOLEAN", "METERED")
    return sso["hasAccess"], calls["limit"]


async def sub_state(gql: GQL, w: Life) -> dict[str, Any]:
    data: dict[str, Any] = (await gql.ok(SUBSCRIPTION, {"p": w.project_id}, token=w.owner.token))["subscription"]
    return data


async def effective(gql: GQL, w: Life) -> tuple[str, str]:
    e = (await gql.ok(EFFECTIVE, {"p": w.project_id}, token=w.owner.token))["effectivePlan"]
    return e["source"], e["plan"]["id"]


async def fail_renewal(client: httpx.AsyncClient, services: Services, fake: FakeStripe, w: Life, sub_id: str) -> str:
    """At PERIOD_END the renewal's first attempt fails (PAST_DUE, grace until GRACE_END); its invoice id."""
    w.clock.at(PERIOD_END)
    failed = fake.renew(sub_id, pay=False)
    await send(client, services, failed)
    invoice_id: str = failed[0]["data"]["object"]["id"]
    return invoice_id


def run_up_to(services: Services, w: Life, instant: dt.datetime) -> None:
    """Run the payments clock from LEAD seconds before `instant`. The checks' entry filled at the
    last pinned instant lives on in real seconds (see the module docstring), so it is forgotten
    here: the next check fills on the running clock, and what ends its entry is then under test."""
    services.entitlements.forget(ids.decode("project", w.project_id))
    w.clock.run_from(instant - dt.timedelta(seconds=LEAD))


# -- 1. trials ---------------------------------------------------------------------------------------------


async def test_a_trial_grants_its_plans_entitlements(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, life: Life
) -> None:
    assert await grants(gql, life) == FREE_GRANTS  # before: the free plan (and this answer is cached)
    sub_id = await subscribe(gql, client, services, fake, life, life.pro_trial)
    s = await sub_state(gql, life)
    assert (s["status"], s["trialEnd"]) == ("TRIALING", iso(T0 + dt.timedelta(days=14)))
    assert await effective(gql, life) == ("SUBSCRIPTION", life.pro_trial)
    assert await grants(gql, life) == PRO_GRANTS
    sso = await entitlement(gql, life, "sso")
    assert sso == {
        "featureKey": "sso",
        "type": "BOOLEAN",
        "hasAccess": True,
        "limit": None,
        "usage": None,
        "remaining": None,
        "config": None,
        "resetsAt": None,
    }
    calls = await entitlement(gql, life, "api_calls")
    assert (calls["usage"], calls["remaining"], calls["resetsAt"]) == ("0", "1000", "2026-02-01T00:00:00+00:00")

    # The trial ends and its first invoice is paid: the same plan, the same entitlements.
    life.clock.at(T0 + dt.timedelta(days=14))
    await send(client, services, fake.renew(sub_id))
    assert (await sub_state(gql, life))["status"] == "ACTIVE"
    assert await grants(gql, life) == PRO_GRANTS


# -- 2. dunning: PAST_DUE within grace, then the free plan ------------------------------------------------------


async def test_grace_keeps_the_paid_entitlements_and_its_end_ends_the_cached_answer(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, life: Life
) -> None:
    sub_id = await subscribe(gql, client, services, fake, life, life.pro)
    assert await grants(gql, life) == PRO_GRANTS
    invoice_id = await fail_renewal(client, services, fake, life, sub_id)

    life.clock.at(PERIOD_END + dt.timedelta(hours=1))
    s = await sub_state(gql, life)
    assert (s["status"], s["graceUntil"], s["inGracePeriod"]) == ("PAST_DUE", iso(GRACE_END), True)
    assert await grants(gql, life) == PRO_GRANTS  # still Pro's during the grace period

    # Just before the grace end, with the clock running at real speed: the check (filled now) is
    # still Pro's; past the end, with nothing announced (no webhook, no dunning run), the free
    # plan's, within LEAD seconds: the entry ended at graceUntil, not at its TTL.
    run_up_to(services, life, GRACE_END)
    assert await grants(gql, life) == PRO_GRANTS
    assert life.clock.now() < GRACE_END, "too slow: the check before the grace end ran after it"
    filled = time.monotonic()
    await life.clock.until_past(GRACE_END)
    assert await grants(gql, life) == FREE_GRANTS
    assert time.monotonic() - filled < TTL_SECONDS / 2
    assert await effective(gql, life) == ("DEFAULT", life.free)
    s = await sub_state(gql, life)
    assert (s["status"], s["inGracePeriod"], s["downgradedAt"]) == ("PAST_DUE", False, None)  # no dunning ran

    # Paying late restores Pro at once (the webhook announces the change).
    life.clock.at(GRACE_END + dt.timedelta(days=1))
    assert await grants(gql, life) == FREE_GRANTS
    await send(client, services, fake.pay_invoice(invoice_id))
    assert (await sub_state(gql, life))["status"] == "ACTIVE"
    assert await grants(gql, life) == PRO_GRANTS


async def test_a_pinned_clock_jump_past_grace_ends_the_cached_answer(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, life: Life
) -> None:
    sub_id = await subscribe(gql, client, services, fake, life, life.pro)
    await fail_renewal(client, services, fake, life, sub_id)
    life.clock.at(GRACE_END - dt.timedelta(hours=1))
    assert await grants(gql, life) == PRO_GRANTS  # filled: min(TTL, 1 h) = 10 s of real time
    life.clock.at(GRACE_END + dt.timedelta(seconds=1))
    assert await effective(gql, life) == ("DEFAULT", life.free)  # the effective plan follows the clock
    assert await grants(gql, life) == FREE_GRANTS  # and the cached checks end at graceUntil on that clock


# -- 3. downgrades at the period end ----------------------------------------------------------------------------


async def test_a_scheduled_downgrade_keeps_pro_until_the_period_end(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, life: Life
) -> None:
    sub_id = await subscribe(gql, client, services, fake, life, life.pro)
    life.clock.at(dt.datetime(2026, 1, 25, tzinfo=UTC))
    down = (
        await gql.ok(CHANGE, {"i": {"projectId": life.project_id, "planId": life.starter}}, token=life.owner.token)
    )["changePlan"]
    assert (down["immediate"], down["effectiveAt"]) == (False, iso(PERIOD_END))
    assert (down["subscription"]["plan"]["id"], down["subscription"]["pendingPlan"]["id"]) == (life.pro, life.starter)
    assert await grants(gql, life) == PRO_GRANTS  # after the change was announced: still Pro's

    # The period end, before any webhook: Starter's, by the cached entry's own end.
    run_up_to(services, life, PERIOD_END)
    assert await grants(gql, life) == PRO_GRANTS
    assert life.clock.now() < PERIOD_END, "too slow: the check before the period end ran after it"
    await life.clock.until_past(PERIOD_END)
    assert await grants(gql, life) == STARTER_GRANTS
    assert await effective(gql, life) == ("SUBSCRIPTION", life.starter)

    # Stripe's renewal (the schedule's next phase bills Starter) folds the pending change in.
    life.clock.at(PERIOD_END)
    await send(client, services, fake.renew(sub_id))
    s = await sub_state(gql, life)
    assert (s["plan"]["id"], s["pendingPlan"]) == (life.starter, None)
    assert await grants(gql, life) == STARTER_GRANTS


async def test_a_cancellation_at_period_end_falls_back_to_free_at_the_period_end(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, life: Life
) -> None:
    sub_id = await subscribe(gql, client, services, fake, life, life.pro)
    life.clock.at(dt.datetime(2026, 1, 25, tzinfo=UTC))
    c = (await gql.ok(CANCEL, {"i": {"projectId": life.project_id}}, token=life.owner.token))["cancelSubscription"]
    assert (c["status"], c["cancelAtPeriodEnd"]) == ("ACTIVE", True)
    assert await grants(gql, life) == PRO_GRANTS

    run_up_to(services, life, PERIOD_END)
    assert await grants(gql, life) == PRO_GRANTS
    assert life.clock.now() < PERIOD_END, "too slow: the check before the period end ran after it"
    await life.clock.until_past(PERIOD_END)
    assert await grants(gql, life) == FREE_GRANTS
    assert await effective(gql, life) == ("DEFAULT", life.free)

    life.clock.at(PERIOD_END)
    await send(client, services, [fake.end_subscription(sub_id)])
    assert (await sub_state(gql, life))["status"] == "CANCELED"
    assert await grants(gql, life) == FREE_GRANTS


# -- 4. upgrades by webhook -------------------------------------------------------------------------------------


async def test_an_upgrade_by_webhook_is_seen_at_once(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, life: Life
) -> None:
    sub_id = await subscribe(gql, client, services, fake, life, life.starter)
    life.clock.at(dt.datetime(2026, 1, 25, tzinfo=UTC))
    assert await grants(gql, life) == STARTER_GRANTS  # cached now, for up to the TTL

    # The customer switches to Pro on Stripe's side (e.g. the billing portal): Stripe tells us
    # with customer.subscription.updated, the item now at Pro's price.
    sub = fake.get(sub_id)
    sub["items"]["data"][0]["price"] = copy.deepcopy(fake.get(life.prices[life.pro]))
    start = time.monotonic()
    await send(client, services, [fake.event("customer.subscription.updated", sub)])
    assert (await sub_state(gql, life))["plan"]["id"] == life.pro
    assert await grants(gql, life) == PRO_GRANTS  # not the cached Starter answer
    assert time.monotonic() - start < TTL_SECONDS / 2  # so the announcement, not the TTL, did it
