"""An answer loaded while a change was being announced is not kept (domain/changes.py's caches).

Each cache reads something, and an announcement (`forget`) can arrive between its read and its
store: what it read may predate the change. Each keeps an epoch, bumped by every forget, and stores
only when the epoch did not move. Here the forget arrives in the middle of the load, as it would
from another instance, and the next question must be asked afresh.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from ledgerx.domain.entitlements import checks
from ledgerx.domain.payments import subscriptions
from ledgerx.domain.ratelimit import Limit
from ledgerx.domain.usage.quotas import Meter, QuotaPolicy
from ledgerx.services import Services
from tests.test_billing_helpers import new_project


async def test_meters_loaded_across_a_forget_are_not_kept(services: Services) -> None:
    pid = await new_project(services)
    policy = QuotaPolicy(services.db)
    loads = 0

    async def lookup(project_id: uuid.UUID) -> tuple[Mapping[str, Sequence[Meter]], float | None]:
        nonlocal loads
        loads += 1
        if loads == 1:
            policy.forget(project_id)  # a plan change announced while this load ran
        return {"api_calls": [Meter("MONTH", 5 * loads)]}, None

    policy.lookup = lookup
    assert (await policy.of(pid)).limits["api_calls"] == (Meter("MONTH", 5),)
    assert (await policy.of(pid)).limits["api_calls"] == (Meter("MONTH", 10),)  # asked again
    assert (await policy.of(pid)).limits["api_calls"] == (Meter("MONTH", 10),)  # now kept
    assert loads == 2


async def test_a_rate_limit_loaded_across_a_forget_is_not_kept(services: Services) -> None:
    pid = await new_project(services)
    limits = services.limits
    loads = 0

    async def lookup(project_id: uuid.UUID) -> Limit | None:
        nonlocal loads
        loads += 1
        if loads == 1:
            limits.forget(project_id)
        return Limit(10 * loads, 1.0)

    old, limits.plan_lookup = limits.plan_lookup, lookup
    try:
        assert (await limits.project_limit(pid)).capacity == 10
        assert (await limits.project_limit(pid)).capacity == 20
        assert (await limits.project_limit(pid)).capacity == 20
        assert loads == 2
    finally:
        limits.plan_lookup = old
        limits.forget(pid)


async def test_a_plan_state_and_checks_loaded_across_a_forget_are_not_kept(services: Services) -> None:
    pid = await new_project(services)
    payments = services.payments
    entitlements = checks.EntitlementChecks(payments)
    real = subscriptions.effective_plan_at
    calls = 0

    def announcing(state: subscriptions.PlanState, now: object) -> subscriptions.EffectivePlan:
        nonlocal calls
        calls += 1
        if calls == 1:  # mid-fill: what every instance does when a change is announced
            payments.forget_plan(pid)
            entitlements.forget(pid)
        return real(state, now)  # type: ignore[arg-type]

    epoch = payments.plan_epoch
    state = await subscriptions.load_state(payments, pid)
    payments.forget_plan(pid)
    payments.remember_plan(pid, state, loaded_at_epoch=epoch)  # loaded before that forget
    assert payments.cached_plan(pid) is None

    subscriptions.effective_plan_at = announcing  # type: ignore[assignment]
    try:
        await entitlements.check(pid, "sso")
        assert entitlements.cached(pid, "sso") is None  # the fill raced with a forget: not kept
        await entitlements.check(pid, "sso")
        assert entitlements.cached(pid, "sso") is not None
    finally:
        subscriptions.effective_plan_at = real  # type: ignore[assignment]
