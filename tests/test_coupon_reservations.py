"""Coupon reservations whose Checkout outcome event was lost, settled by the sweep
(`reservation_sweep.sweep_reservations`) by asking Stripe (the fake) for the session: an expired one is
released, an open one past its expiry is expired at Stripe and released, a paid one is processed
as its `checkout.session.completed` would have been; the real event arriving later changes
nothing; Stripe failures are retried at the next sweep; two sweeps settle each reservation once.
And the lock order: reserving, releasing and completing on one coupon at once never deadlock."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput
from ledgerx.domain.payments import redemptions, reservation_sweep
from ledgerx.domain.payments.reservation_sweep import SweepReport
from ledgerx.ids import uuid7
from tests.fake_stripe import checkout, create_pack, create_plan
from tests.test_coupons import World, settings, unique, world

__all__ = ["settings", "world"]  # fixtures reused from test_coupons

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

# A reservation is due for the sweep once its session's hold and the grace have passed.
DUE = redemptions.CHECKOUT_HOLD + reservation_sweep.SWEEP_GRACE + dt.timedelta(minutes=1)
EARLY = redemptions.CHECKOUT_HOLD + reservation_sweep.SWEEP_GRACE - dt.timedelta(minutes=1)


async def sweep_at(w: World, after: dt.timedelta, sweeps: int = 1) -> list[SweepReport]:
    """`sweeps` concurrent sweeps with the payments clock `after` ahead (the whole batch)."""
    svc = w.services.payments
    real = svc.clock
    svc.clock = lambda: real() + after
    try:
        return list(
            await asyncio.gather(*(reservation_sweep.sweep_reservations(svc, limit=1000) for _ in range(sweeps)))
        )
    finally:
        svc.clock = real


def touched(report: SweepReport) -> set[str]:
    return {*report.released, *report.completed, *report.left, *report.skipped}


def reads_of(w: World, sid: str) -> int:
    return len([c for c in w.fake.calls_to("GET", f"checkout/sessions/{sid}") if c.path.strip("/").endswith(sid)])


async def status_of(w: World, sid: str) -> str:
    (row,) = await w.sql("SELECT status FROM coupon_redemptions WHERE stripe_checkout_session_id = $1", sid)
    return str(row["status"])


async def test_lost_expiry_is_released_after_the_grace(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=100, amount=500)
    c = await w.coupon(code=unique("lost"), percentOff=50, maxRedemptions=1)
    p1, p2 = await w.project(), await w.project()
    sid = await checkout(w.gql, w.owner, p1, creditPackId=pack, couponCode=c["code"])
    lost = w.fake.expire_checkout(sid)  # Stripe expired it; the event never reaches LedgerX

    # Before the hold and the grace are over: nothing happens and Stripe is not asked.
    (early,) = await sweep_at(w, EARLY)
    assert sid not in touched(early)
    assert reads_of(w, sid) == 0
    assert await w.times_redeemed(c["id"]) == 1 and await status_of(w, sid) == "RESERVED"

    (report,) = await sweep_at(w, DUE)
    assert sid in report.released
    assert reads_of(w, sid) == 1
    assert await w.times_redeemed(c["id"]) == 0 and await status_of(w, sid) == "RELEASED"
    audits = await w.sql(
        "SELECT request_id FROM audit_log WHERE action = 'payments.coupon.release' AND project_id = $1",
        ids.decode("project", p1),
    )
    assert [a["request_id"] for a in audits] == [f"coupon-sweep:{sid}"]

    # The slot is free again: another project reserves it.
    sid2 = await checkout(w.gql, w.owner, p2, creditPackId=pack, couponCode=c["code"])
    assert await w.times_redeemed(c["id"]) == 1 and await status_of(w, sid2) == "RESERVED"
    # The lost event finally arrives: nothing more is released.
    await w.send(lost)
    assert await w.times_redeemed(c["id"]) == 1 and await status_of(w, sid) == "RELEASED"
    # A settled reservation is not asked about again.
    (again,) = await sweep_at(w, DUE)
    assert sid not in touched(again) and reads_of(w, sid) == 1


async def test_open_session_past_its_expiry_is_expired_at_stripe_then_released(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=100, amount=500)
    c = await w.coupon(code=unique("open"), percentOff=50, maxRedemptions=2)
    p1, p2 = await w.project(), await w.project()
    sid = await checkout(w.gql, w.owner, p1, creditPackId=pack, couponCode=c["code"])
    # Stripe still says open (its expiry job has not run); a second session that Stripe says is
    # payable for hours more is left alone.
    later = await checkout(w.gql, w.owner, p2, creditPackId=pack, couponCode=c["code"])
    w.fake.get(later)["expires_at"] += 10 * 3600
    assert w.fake.get(sid)["status"] == "open"

    (report,) = await sweep_at(w, DUE)
    assert sid in report.released
    assert len(w.fake.calls_to("POST", f"checkout/sessions/{sid}/expire")) == 1
    assert w.fake.get(sid)["status"] == "expired"
    assert await status_of(w, sid) == "RELEASED"
    assert report.left.get(later) == "still open"
    assert not w.fake.calls_to("POST", f"checkout/sessions/{later}/expire")
    assert w.fake.get(later)["status"] == "open" and await status_of(w, later) == "RESERVED"
    assert await w.times_redeemed(c["id"]) == 1

    # The expired event Stripe sent for the expire call arrives: nothing changes.
    await w.send(w.fake.last_event("checkout.session.expired"))
    assert await w.times_redeemed(c["id"]) == 1 and await status_of(w, sid) == "RELEASED"


async def test_paid_session_whose_completed_event_was_lost_is_processed(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=1000, amount=1000)
    c = await w.coupon(code=unique("paid"), percentOff=25, bonusCredits="500", maxRedemptions=1, appliesTo=[pack])
    pid = await w.project()
    sid = await checkout(w.gql, w.owner, pid, creditPackId=pack, couponCode=c["code"])
    events = w.fake.complete_checkout(sid)  # paid; the events are lost for now
    assert await w.balance(pid) == 0

    (report,) = await sweep_at(w, DUE)
    assert sid in report.completed
    # The whole purchase, as the lost event would have applied it: the pack's credits, the Payment,
    # the coupon redeemed with its bonus.
    assert await w.balance(pid) == 1500
    (row,) = await w.sql(
        "SELECT r.status, r.payment_id, r.bonus_transaction_id, p.stripe_checkout_session_id AS paid_by"
        " FROM coupon_redemptions r JOIN payments p ON p.id = r.payment_id WHERE r.stripe_checkout_session_id = $1",
        sid,
    )
    assert row["status"] == "REDEEMED" and row["bonus_transaction_id"] is not None and row["paid_by"] == sid
    assert await w.times_redeemed(c["id"]) == 1
    (inbox_row,) = await w.sql(
        "SELECT status, source FROM webhook_events WHERE stripe_event_id = $1", f"reconcile:{sid}"
    )
    assert (inbox_row["status"], inbox_row["source"]) == ("PROCESSED", "RECONCILE")

    # The real events arrive after all: no more credits, bonus or slots.
    await w.send(*events)
    assert await w.balance(pid) == 1500
    assert await w.times_redeemed(c["id"]) == 1
    counts = await w.sql(
        "SELECT kind, count(*) AS n FROM ledger_transactions WHERE project_id = $1 GROUP BY kind ORDER BY kind",
        ids.decode("project", pid),
    )
    assert {r["kind"]: r["n"] for r in counts} == {"PROMOTION": 1, "PURCHASE": 1}
    assert len(await w.sql("SELECT id FROM payments WHERE stripe_checkout_session_id = $1", sid)) == 1
    (again,) = await sweep_at(w, DUE)
    assert sid not in touched(again) and reads_of(w, sid) == 1


async def test_paid_subscription_checkout_whose_completed_event_was_lost(world: World) -> None:
    w = world
    plan = await create_plan(w.gql, w.admin, name="Sweep Sub", amount=2000)
    c = await w.coupon(code=unique("subpaid"), percentOff=10, bonusCredits="200", maxRedemptions=1)
    pid = await w.project()
    sid = await checkout(w.gql, w.owner, pid, planId=plan, couponCode=c["code"])
    events = w.fake.complete_checkout(sid)
    stripe_sub = str(w.fake.get(sid)["subscription"])
    before = await w.balance(pid)

    (report,) = await sweep_at(w, DUE)
    assert sid in report.completed
    (row,) = await w.sql(
        "SELECT r.status, r.subscription_id, s.id AS sub FROM coupon_redemptions r"
        " JOIN subscriptions s ON s.stripe_subscription_id = r.stripe_subscription_id"
        " WHERE r.stripe_checkout_session_id = $1",
        sid,
    )
    assert row["status"] == "REDEEMED" and row["subscription_id"] == row["sub"]
    assert await w.balance(pid) == before + 200

    await w.send(*events)
    assert await w.balance(pid) == before + 200
    assert await w.times_redeemed(c["id"]) == 1
    subs = await w.sql("SELECT id FROM subscriptions WHERE stripe_subscription_id = $1", stripe_sub)
    assert len(subs) == 1


async def test_stripe_down_the_next_sweep_settles(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=100, amount=500)
    c = await w.coupon(code=unique("down"), percentOff=50, maxRedemptions=1)
    pid = await w.project()
    sid = await checkout(w.gql, w.owner, pid, creditPackId=pack, couponCode=c["code"])
    w.fake.expire_checkout(sid)
    w.fake.fail_next("GET", f"checkout/sessions/{sid}", status=500)

    (failed,) = await sweep_at(w, DUE)
    assert failed.left[sid].startswith("Stripe error")
    assert await w.times_redeemed(c["id"]) == 1 and await status_of(w, sid) == "RESERVED"

    (report,) = await sweep_at(w, DUE)
    assert sid in report.released
    assert await w.times_redeemed(c["id"]) == 0 and await status_of(w, sid) == "RELEASED"


async def test_two_concurrent_sweeps_settle_each_reservation_once(world: World) -> None:
    w = world
    pack = await create_pack(w.gql, w.admin, credits=100, amount=500)
    c = await w.coupon(code=unique("twice"), percentOff=50, maxRedemptions=6)
    sids = []
    for _ in range(6):
        sid = await checkout(w.gql, w.owner, await w.project(), creditPackId=pack, couponCode=c["code"])
        w.fake.expire_checkout(sid)
        sids.append(sid)
    assert await w.times_redeemed(c["id"]) == 6

    first, second = await sweep_at(w, DUE, sweeps=2)
    released = [s for s in first.released + second.released if s in sids]
    assert sorted(released) == sorted(sids)  # each by exactly one of the sweeps
    assert all(reads_of(w, s) == 1 for s in sids)  # and Stripe asked once per session
    assert await w.times_redeemed(c["id"]) == 0
    audits = await w.sql(
        "SELECT count(*) AS n FROM audit_log WHERE action = 'payments.coupon.release' AND after->>'couponId' = $1",
        c["id"],
    )
    assert audits[0]["n"] == 6


# -- lock order ------------------------------------------------------------------------------------------


async def test_reserve_release_and_complete_on_one_coupon_never_deadlock(world: World) -> None:
    """Each project, many rounds: its reservation is released (or, at the end, completed) while it
    reserves the coupon again, all projects at once. The other lock order deadlocks here: the new
    reservation holds the coupon and its insert waits on the unique index for the release, which
    waits for the coupon."""
    w = world
    svc = w.services.payments
    pack = ids.decode("credit_pack", await create_pack(w.gql, w.admin, credits=100, amount=500))
    c = await w.coupon(code=unique("locks"), percentOff=10, maxRedemptions=1000)
    target = redemptions.Target(None, pack, "USD")
    actor = Actor.system()
    projects = [ids.decode("project", await w.project()) for _ in range(8)]
    rounds = 25

    async def reserve(pid: uuid.UUID) -> Mapping[str, Any] | None:
        params: dict[str, Any] = {}
        try:
            async with svc.db.transaction(project_id=pid) as s:
                held = await redemptions.reserve_for_checkout(svc, s, actor, pid, c["code"], target, params, None)
                sid = f"cs_test_locks_{uuid7().hex}"
                await redemptions.attach_session(s, held, sid)
        except BadInput as exc:
            if exc.extra.get("reason") != "ALREADY_REDEEMED":
                raise
            return None
        return {"id": sid, "metadata": params["metadata"]}

    async def cycle(pid: uuid.UUID, complete_at_end: bool) -> None:
        held = await reserve(pid)
        for i in range(rounds):
            assert held is not None
            last = i == rounds - 1
            settle = redemptions.complete_checkout if last and complete_at_end else redemptions.release_checkout
            _, again = await asyncio.gather(settle(svc, actor, pid, held), reserve(pid))
            held = again if again is not None else (None if last and complete_at_end else await reserve(pid))

    await asyncio.gather(*(cycle(pid, complete_at_end=n % 2 == 0) for n, pid in enumerate(projects)))

    coupon_id = ids.decode("coupon", c["id"])
    rows = await w.sql(
        "SELECT status, count(*) AS n FROM coupon_redemptions WHERE coupon_id = $1 GROUP BY status", coupon_id
    )
    by = {r["status"]: r["n"] for r in rows}
    assert by.get("REDEEMED") == 4
    assert await w.times_redeemed(c["id"]) == by.get("RESERVED", 0) + by.get("REDEEMED", 0)
    assert by.get("RELEASED", 0) >= len(projects) * (rounds - 1)
    # Each project holds at most one slot.
    held_slots = await w.sql(
        "SELECT project_id, count(*) AS n FROM coupon_redemptions WHERE coupon_id = $1"
        " AND status IN ('RESERVED', 'REDEEMED') GROUP BY project_id",
        coupon_id,
    )
    assert all(r["n"] == 1 for r in held_slots)
