"""Coupon reservations whose Checkout outcome event was lost: `sweep_reservations` asks Stripe
about each reservation still RESERVED `SWEEP_GRACE` after its `expires_at` and settles it as the lost
event would have (redemptions.py holds the reservations themselves; this module sits above the
inbox, which it hands a recovered paid session to, so nothing it imports imports it)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, text, update

from ledgerx.db.models import CouponRedemption, WebhookEvent
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError
from ledgerx.domain.payments import inbox, objects, redemptions
from ledgerx.domain.payments.service import PaymentsService

log = logging.getLogger("ledgerx.payments.coupons")

# How long after a reservation's `expires_at` the sweep asks Stripe about it. Stripe sends
# `checkout.session.expired` within minutes of the expiry; the grace leaves that event (and a
# `completed` for a payment made at the last second) time to arrive and be processed first, so
# the sweep only calls Stripe for reservations whose event was really lost.
SWEEP_GRACE = dt.timedelta(minutes=15)
# How often the webhook processor sweeps (seconds), and how many reservations one sweep looks at.
SWEEP_INTERVAL = 60.0
SWEEP_BATCH = 50
# The id prefix of the synthetic event a recovered checkout is processed as (`<prefix><session>`):
# reconcile.py uses the same ids, so the two recover one session once between them.
RECOVERED_EVENT_PREFIX = "reconcile:"
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:k, 0))")


@dataclasses.dataclass(slots=True)
class SweepReport:
    """What one sweep did, by Stripe checkout session id."""

    released: list[str] = dataclasses.field(default_factory=list)
    completed: list[str] = dataclasses.field(default_factory=list)
    # Still RESERVED: open and not past its expiry, paid asynchronously and not yet settled, Stripe
    # failed (asked again next sweep), or handed to the inbox, which retries it.
    left: dict[str, str] = dataclasses.field(default_factory=dict)
    # Another instance was sweeping it, or it was settled meanwhile.
    skipped: list[str] = dataclasses.field(default_factory=list)


async def sweep_reservations(svc: PaymentsService, limit: int = SWEEP_BATCH) -> SweepReport:
    """Settle RESERVED redemptions whose session should have ended (`expires_at` + `SWEEP_GRACE`)
    and whose `expired`/`completed` event never came, by asking Stripe for the session:

    - `expired` (or `open` past its `expires_at`: expired at Stripe first, so it can no longer be
      paid) -> released exactly as `checkout.session.expired` does (`release_checkout`);
    - `complete` and paid -> the session is stored in the webhook inbox as a synthetic
      `checkout.session.completed` (source RECONCILE, id `reconcile:<session>`) and processed now,
      so the whole purchase (pack credits, Payment, invoice, subscription row) is applied by the
      same handler as the lost event, and the coupon redeemed with it (the handler's
      `complete_checkout`). Redeeming the coupon alone would grant bonus credits for a purchase the
      books do not have. Should processing fail, the inbox retries it (or keeps it DEAD for an
      admin) and the sweep leaves the reservation to it;
    - anything else (`complete` awaiting an asynchronous payment, a Stripe error) -> left RESERVED
      and asked again at a later sweep.

    Each settlement is idempotent against the real event arriving later. Two instances never
    settle the same reservation at once: each holds a transaction-scoped advisory lock on the
    redemption while it works (a row lock cannot be held: the settling transactions update that
    row themselves). Reservations that stay RESERVED go to the back of the next sweep's queue
    (`updated_at` is set when the sweep looked), so a few stuck ones never starve the rest."""
    report = SweepReport()
    if svc.stripe is None:
        return report
    now = svc.now()
    async with svc.db.transaction(system=True) as s:
        recovering = select(WebhookEvent.id).where(
            WebhookEvent.stripe_event_id == RECOVERED_EVENT_PREFIX + CouponRedemption.stripe_checkout_session_id
        )
        due = (
            await s.execute(
                select(CouponRedemption.id, CouponRedemption.project_id, CouponRedemption.stripe_checkout_session_id)
                .where(
                    CouponRedemption.status == "RESERVED",
                    CouponRedemption.expires_at <= now - SWEEP_GRACE,
                    CouponRedemption.stripe_checkout_session_id.is_not(None),
                    ~CouponRedemption.stripe_checkout_session_id.startswith("pending:"),
                    ~recovering.exists(),
                )
                .order_by(CouponRedemption.updated_at, CouponRedemption.id)
                .limit(limit)
            )
        ).all()
    for rid, project_id, session_id in due:
        await _sweep_one(svc, report, rid, project_id, str(session_id), now)
    if report.released or report.completed or report.left:
        log.info(
            "coupon sweep: %d released, %d completed, %d left",
            len(report.released),
            len(report.completed),
            len(report.left),
        )
    return report


async def _sweep_one(
    svc: PaymentsService, report: SweepReport, rid: uuid.UUID, project_id: uuid.UUID, session_id: str, now: dt.datetime
) -> None:
    async with svc.db.transaction(system=True) as claim:
        # Held until this reservation is settled (the settling runs in transactions of its own).
        if not await claim.scalar(_TRY_LOCK, {"k": f"ledgerx:coupon-sweep:{rid}"}):
            report.skipped.append(session_id)
            return
        status = await claim.scalar(select(CouponRedemption.status).where(CouponRedemption.id == rid))
        if status != "RESERVED":
            report.skipped.append(session_id)
            return
        try:
            outcome = await _settle(svc, rid, project_id, session_id, now)
        except AppError as exc:
            log.warning("coupon sweep: checkout %s: %s; trying again at a later sweep", session_id, exc.message)
            outcome = f"Stripe error: {exc.message}"
        except Exception as exc:  # one reservation's failure must not stop the others
            log.exception("coupon sweep: checkout %s failed; trying again at a later sweep", session_id)
            outcome = f"failed: {type(exc).__name__}"
        if outcome == "released":
            report.released.append(session_id)
        elif outcome == "completed":
            report.completed.append(session_id)
        elif outcome == "settled meanwhile":
            report.skipped.append(session_id)
        else:
            report.left[session_id] = outcome
            await claim.execute(
                update(CouponRedemption)
                .where(CouponRedemption.id == rid, CouponRedemption.status == "RESERVED")
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            )


async def _settle(
    svc: PaymentsService, rid: uuid.UUID, project_id: uuid.UUID, session_id: str, now: dt.datetime
) -> str:
    stripe = svc.require_stripe()
    actor = Actor.system(request_id=f"coupon-sweep:{session_id}")
    sess = await stripe.retrieve_checkout_session(session_id)
    if redemptions.redemption_of(objects.metadata(sess)) != rid:
        log.error("coupon sweep: checkout %s does not name coupon redemption %s; left as it is", session_id, rid)
        return "the session names another redemption"
    status = sess.get("status")
    if status == "open":
        ends = objects.ts(sess.get("expires_at"))
        if ends is None or ends > now:
            return "still open"
        # Stripe has not expired it yet: do it now, so it can no longer be paid once released.
        sess = await stripe.expire_checkout_session(session_id)
        status = sess.get("status")
    if status == "expired":
        done = await redemptions.release_checkout(svc, actor, project_id, sess)
        # Not released here: the real event (or another path) settled it meanwhile.
        return "released" if done == "coupon reservation released" else "settled meanwhile"
    if status == "complete" and sess.get("payment_status") in ("paid", "no_payment_required"):
        return await _recover_completed(svc, rid, sess, now)
    return f"status {status}, payment {sess.get('payment_status')}"


async def _recover_completed(svc: PaymentsService, rid: uuid.UUID, sess: Mapping[str, Any], now: dt.datetime) -> str:
    session_id = str(sess["id"])
    synthetic = {
        "id": RECOVERED_EVENT_PREFIX + session_id,
        "object": "event",
        "type": "checkout.session.completed",
        "created": sess.get("created") or objects.unix(now),
        "livemode": bool(sess.get("livemode")),
        "data": {"object": dict(sess)},
    }
    stored = await inbox.store(svc, synthetic, source="RECONCILE")
    if stored.created:
        done = await inbox.process(svc, await inbox.claim_one(svc, stored.event.id), trigger="RECONCILE")
        log.warning("coupon sweep: checkout %s was paid but its event was lost; processed: %s", session_id, done.status)
    async with svc.db.transaction(system=True) as s:
        status = await s.scalar(select(CouponRedemption.status).where(CouponRedemption.id == rid))
    if status == "REDEEMED":
        return "completed"
    return f"paid; its recovered event {stored.event.stripe_event_id} is left to the inbox"
