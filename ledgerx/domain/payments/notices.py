"""The mails of dunning: a failed payment, the grace period ending in a day, the fall back to the
free plan. Each is `notifications.notify` in the transaction that records its cause, with an
occurrence key that names the occurrence, so a replayed Stripe event or a second instance's sweep
mails nobody twice.

Occurrences: a failed payment is (invoice, Stripe's attempt number); the grace warning and the
downgrade are (subscription, the past-due episode's grace end / start). The mails link to the
console's billing page (notifications/links.py), where an admin opens Stripe's customer portal.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, exists, func, literal, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import BigInteger, Text

from ledgerx import ids
from ledgerx.db.models import Invoice, MailOutbox, Plan, PlanSubscription
from ledgerx.domain import mail
from ledgerx.domain.notifications import amounts, links
from ledgerx.domain.notifications.kinds import Kind
from ledgerx.domain.notifications.notify import notify
from ledgerx.domain.payments.records import PlanRecord
from ledgerx.domain.payments.service import PaymentsService

GRACE_WARNING = dt.timedelta(days=1)


def _epoch(t: dt.datetime) -> int:
    return int(t.timestamp())


def grace_key(sub_id: object, grace_until: dt.datetime) -> str:
    return f"{sub_id}:{_epoch(grace_until)}"


async def _plan_name(s: AsyncSession, plan_id: object) -> str:
    return str(await s.scalar(select(Plan.name).where(Plan.id == plan_id)) or "current")


async def payment_failed(
    svc: PaymentsService, s: AsyncSession, invoice: Invoice, sub: PlanSubscription, *, attempt: int, event_id: str
) -> int:
    """A subscription invoice's payment failed (call after the dunning state is recomputed)."""
    occurrence = f"{invoice.id}:attempt:{attempt}" if attempt > 0 else f"{invoice.id}:event:{event_id}"
    return await notify(
        s,
        invoice.project_id,
        Kind.PAYMENT_FAILED,
        occurrence,
        {
            "amount": amounts.amount(invoice.amount_due, invoice.currency),
            "invoice_id": ids.encode("invoice", invoice.id),
            "attempt": str(max(attempt, invoice.attempt_count, 1)),
            "next_attempt": mail.instant(invoice.next_payment_attempt, none="none scheduled"),
            "grace_until": mail.instant(sub.grace_until, none="the end of the grace period"),
            "portal_url": links.billing_page(svc.settings.public_url, invoice.project_id),
        },
    )


async def downgraded(svc: PaymentsService, s: AsyncSession, sub: PlanSubscription, free: PlanRecord | None) -> int:
    """The grace period ran out: the project is on the free plan now (`run_dunning`)."""
    assert sub.past_due_since is not None
    return await notify(
        s,
        sub.project_id,
        Kind.DOWNGRADED,
        f"{sub.id}:{_epoch(sub.past_due_since)}",
        {
            "plan_name": await _plan_name(s, sub.plan_id),
            "free_plan_name": free.name if free is not None else "free",
            "portal_url": links.billing_page(svc.settings.public_url, sub.project_id),
        },
    )


async def warn_grace_ending(svc: PaymentsService, *, limit: int = 200) -> int:
    """Mail every past-due subscription whose grace period ends within `GRACE_WARNING`, once.

    Run periodically (the webhook processor's dunning round). Subscriptions already warned about
    this grace end are skipped in the query (the outbox holds their occurrence), so a sweep reads
    only the new ones; two instances sweeping at once skip each other's rows (SKIP LOCKED), and
    the occurrence key would refuse a second mail anyway. Returns how many mails were queued.
    """
    now = svc.now()
    stored_key = (
        literal(Kind.GRACE_ENDING.slug + ":")
        + type_coerce(PlanSubscription.id, Text)
        + literal(":")
        + func.floor(func.extract("epoch", PlanSubscription.grace_until)).cast(BigInteger).cast(Text)
    )
    warned = exists().where(
        and_(MailOutbox.project_id == PlanSubscription.project_id, MailOutbox.occurrence_key == stored_key)
    )
    queued = 0
    async with svc.db.transaction(system=True) as s:
        subs = list(
            (
                await s.execute(
                    select(PlanSubscription)
                    .where(
                        PlanSubscription.grace_until > now,
                        PlanSubscription.grace_until <= now + GRACE_WARNING,
                        PlanSubscription.past_due_since.is_not(None),
                        PlanSubscription.downgraded_at.is_(None),
                        PlanSubscription.ended_at.is_(None),
                        ~warned,
                    )
                    .order_by(PlanSubscription.grace_until)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        for sub in subs:
            assert sub.grace_until is not None
            queued += await notify(
                s,
                sub.project_id,
                Kind.GRACE_ENDING,
                grace_key(sub.id, sub.grace_until),
                {
                    "plan_name": await _plan_name(s, sub.plan_id),
                    "grace_until": mail.instant(sub.grace_until),
                    "portal_url": links.billing_page(svc.settings.public_url, sub.project_id),
                },
            )
    return queued
