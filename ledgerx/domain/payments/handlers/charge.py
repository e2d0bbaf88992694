"""`charge.refunded` and `charge.dispute.*`: reverse refunded credits once per Stripe refund, hold
disputed credits while the dispute is open and release them when it is won."""

from __future__ import annotations

import uuid

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import LedgerTransaction, Payment, PaymentCustomer, PaymentDispute, PaymentRefund
from ledgerx.domain.invoicing import credit_notes
from ledgerx.domain.invoicing.refunds import META_REASON
from ledgerx.domain.ledger.posting import post_transaction
from ledgerx.domain.ledger.refunds import refund_transaction
from ledgerx.domain.ledger.types import CREDITS, Kind, Leg, Posted, Posting, SystemAccount
from ledgerx.domain.payments import grants, objects, webhook_events
from ledgerx.domain.payments.handlers.event import Event, NotReady, Outcome
from ledgerx.domain.payments.handlers.lookups import audit_event
from ledgerx.domain.payments.service import PaymentsService


async def _find_payment(
    s: AsyncSession, *, charge: str | None, payment_intent: str | None, invoice: str | None
) -> Payment | None:
    conds = []
    if charge:
        conds.append(Payment.stripe_charge_id == charge)
    if payment_intent:
        conds.append(Payment.stripe_payment_intent_id == payment_intent)
    if invoice:
        conds.append(Payment.stripe_invoice_id == invoice)
    if not conds:
        return None
    return (
        await s.execute(
            select(Payment)
            .where(or_(*conds))
            .order_by(Payment.id)
            .limit(1)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar()


async def _not_found(s: AsyncSession, ev: Event, customer: str | None) -> Outcome:
    if customer and await s.scalar(
        select(PaymentCustomer.project_id).where(PaymentCustomer.stripe_customer_id == customer)
    ):
        raise NotReady("the payment this event refers to is not recorded yet")
    if not customer:
        # Disputes name no customer: wait for the payment for a while (the processor gives up
        # after its retries and the event stays visible as DEAD to platform admins).
        raise NotReady("no recorded payment matches this charge yet")
    return Outcome("ignored: not a LedgerX payment", ignored=True)


def _credits_for(p: Payment, money: int) -> int:
    """Credits bought by `money` of the payment (floor; the whole payment buys all its credits)."""
    if p.amount <= 0:
        return p.credits if money > 0 else 0
    return p.credits * min(money, p.amount) // p.amount


async def _posted_amount(s: AsyncSession, project_id: uuid.UUID, key: str) -> tuple[uuid.UUID, int] | None:
    row = (
        await s.execute(
            select(LedgerTransaction.id, LedgerTransaction.amount).where(
                LedgerTransaction.project_id == project_id, LedgerTransaction.idempotency_key == key
            )
        )
    ).first()
    return (row.id, row.amount) if row is not None else None


_REASONS = {
    "duplicate": "Refund: duplicate payment",
    "fraudulent": "Refund: fraudulent payment",
    "requested_by_customer": "Refund requested by the customer",
}


def _refund_reason(refund: objects.Obj) -> str:
    """What the credit note says: the reason given to `refundInvoice`, else Stripe's reason."""
    given = objects.metadata(refund).get(META_REASON)
    if given:
        return given
    return _REASONS.get(str(refund.get("reason") or ""), "Refund")


async def on_charge_refunded(svc: PaymentsService, ev: Event) -> Outcome:
    ch = ev.obj
    charge_id = objects.ref(ch.get("id"))
    total = objects.integer(ch.get("amount_refunded"))
    async with svc.db.transaction(system=True) as s:
        payment = await _find_payment(
            s,
            charge=charge_id,
            payment_intent=objects.ref(ch.get("payment_intent")),
            invoice=objects.ref(ch.get("invoice")),
        )
        if payment is None:
            return await _not_found(s, ev, objects.ref(ch.get("customer")))
        out = Outcome("", payment.project_id)
        payment.stripe_charge_id = payment.stripe_charge_id or charge_id
        refunds = sorted(
            (
                (
                    objects.integer(r.get("created")),
                    str(r.get("id")),
                    objects.integer(r.get("amount")),
                    _refund_reason(r),
                )
                for r in (objects.obj(r) for r in (objects.obj(ch.get("refunds")).get("data") or []))
                if r.get("id") and r.get("status") in ("succeeded", "pending", None)
            ),
        )
        if not refunds and total > payment.amount_refunded:
            # Newer API versions do not embed the refunds: name the refund by the cumulative total.
            refunds = [(0, f"{charge_id}@{total}", total - payment.amount_refunded, "Refund")]
        known = set(
            (
                await s.execute(select(PaymentRefund.stripe_refund_id).where(PaymentRefund.payment_id == payment.id))
            ).scalars()
        )
        reversed_now = 0
        refunded_before = payment.amount_refunded
        noted: list[tuple[str, int, str]] = []
        for _, refund_id, amount, reason in refunds:
            if refund_id in known:
                continue
            money = min(amount, total - payment.amount_refunded)
            if money <= 0:
                continue
            credits = _credits_for(payment, payment.amount_refunded + money) - _credits_for(
                payment, payment.amount_refunded
            )
            credits = min(credits, payment.credits - payment.credits_reversed - payment.credits_held)
            key = f"stripe:refund:{refund_id}"
            txn_id: uuid.UUID | None = None
            # The ledger's refund runs in its own transaction: after a crash between it and this
            # one, the retry finds the posting by its key and records what it reversed.
            done = await _posted_amount(s, payment.project_id, key)
            if done is not None:
                txn_id, credits = done
            elif credits > 0 and payment.transaction_id is not None:
                posted = await refund_transaction(
                    svc.ledger,
                    ev.actor,
                    payment.project_id,
                    payment.transaction_id,
                    credits,
                    key,
                    reason="Stripe refund",
                )
                txn_id = posted.transaction.id
            else:
                credits = 0
            s.add(
                PaymentRefund(
                    stripe_refund_id=refund_id,
                    payment_id=payment.id,
                    project_id=payment.project_id,
                    amount=money,
                    credits=credits,
                    transaction_id=txn_id,
                )
            )
            noted.append((refund_id, money, reason))
            payment.amount_refunded += money
            payment.credits_reversed += credits
            reversed_now += credits
        if reversed_now or refunds:
            payment.status = (
                "REFUNDED"
                if payment.amount_refunded >= payment.amount
                else ("PARTIALLY_REFUNDED" if payment.amount_refunded > 0 else payment.status)
            )
        payment.updated_at = func.now()
        # The credit notes after the ledger's refunds (their own transactions): a credit note's
        # number locks its sequence until this commits, so nothing slow may follow it.
        for refund_id, money, reason in noted:
            await credit_notes.for_refund(svc, s, payment.invoice_id, refund_id=refund_id, amount=money, reason=reason)
        await s.flush()
        if refunded_before != payment.amount_refunded:
            # Money went back (whatever credits it reversed): once per Stripe refund recorded.
            await webhook_events.payment(s, "payment.refunded", payment)
        if reversed_now:
            await audit_event(
                s,
                ev,
                "payment.refunded",
                payment.project_id,
                ("payment", ids.encode("payment", payment.id)),
                amountRefunded=str(payment.amount_refunded),
                creditsReversed=str(payment.credits_reversed),
            )
            out.events.append(grants.payment_event("payment.refunded", payment))
    out.result = f"refunded {payment.amount_refunded} of {payment.amount}; {payment.credits_reversed} credits reversed"
    return out


async def _move_to_disputes(
    svc: PaymentsService, s: AsyncSession, ev: Event, payment: Payment, dispute_id: str, credits: int
) -> Posted:
    """Hold `credits` of a disputed payment: from its wallet into the DISPUTES account, keyed by
    the Stripe dispute; negative `credits` release a won dispute's hold back into the wallet."""
    assert payment.wallet_id is not None
    release = credits < 0
    return await post_transaction(
        svc.ledger,
        Posting(
            project_id=payment.project_id,
            wallet_id=payment.wallet_id,
            kind=Kind.DISPUTE,
            currency=CREDITS,
            legs=(Leg(-credits, wallet_id=payment.wallet_id), Leg(credits, system=SystemAccount.DISPUTES)),
            idempotency_key=f"stripe:dispute:{dispute_id}" + (":release" if release else ""),
            actor=ev.actor,
            reference=dispute_id,
            reason="Dispute won: held credits released" if release else "Held while the payment is disputed",
            metadata={"stripeDisputeId": dispute_id, "paymentId": ids.encode("payment", payment.id)},
            action="payments.dispute_release" if release else "payments.dispute_hold",
        ),
        session=s,
    )


async def on_dispute(svc: PaymentsService, ev: Event) -> Outcome:
    d = ev.obj
    dispute_id = objects.ref(d.get("id"))
    if dispute_id is None:
        return Outcome("ignored: no dispute id", ignored=True)
    async with svc.db.transaction(system=True) as s:
        payment = await _find_payment(
            s, charge=objects.ref(d.get("charge")), payment_intent=objects.ref(d.get("payment_intent")), invoice=None
        )
        if payment is None:
            return await _not_found(s, ev, None)
        out = Outcome("", payment.project_id)
        payment.stripe_charge_id = payment.stripe_charge_id or objects.ref(d.get("charge"))
        row = await s.get(PaymentDispute, dispute_id, with_for_update=True)
        if row is None:
            amount = objects.integer(d.get("amount"))
            hold = min(_credits_for(payment, amount), payment.credits - payment.credits_reversed - payment.credits_held)
            hold_txn = None
            if hold > 0 and payment.wallet_id is not None:
                posted = await _move_to_disputes(svc, s, ev, payment, dispute_id, hold)
                hold_txn = posted.transaction.id
            else:
                hold = 0
            row = PaymentDispute(
                stripe_dispute_id=dispute_id,
                payment_id=payment.id,
                project_id=payment.project_id,
                amount=amount,
                credits_held=hold,
                status="OPEN",
                hold_transaction_id=hold_txn,
            )
            s.add(row)
            payment.credits_held += hold
            await audit_event(
                s,
                ev,
                "payment.dispute_opened",
                payment.project_id,
                ("payment", ids.encode("payment", payment.id)),
                disputeId=dispute_id,
                creditsHeld=str(hold),
            )
            out.events.append(grants.payment_event("payment.disputed", payment))
            await webhook_events.payment(s, "payment.disputed", payment)
        final = {"won": "WON", "lost": "LOST"}.get(str(d.get("status")))
        if final is not None and row.status == "OPEN":
            if final == "WON" and row.credits_held > 0 and payment.wallet_id is not None:
                posted = await _move_to_disputes(svc, s, ev, payment, dispute_id, -row.credits_held)
                row.release_transaction_id = posted.transaction.id
                payment.credits_held -= row.credits_held
            row.status = final
            row.updated_at = func.now()
            await audit_event(
                s,
                ev,
                "payment.dispute_closed",
                payment.project_id,
                ("payment", ids.encode("payment", payment.id)),
                disputeId=dispute_id,
                outcome=final,
            )
        payment.updated_at = func.now()
        out.result = f"dispute {row.status.lower()}; {row.credits_held} credits held"
    return out
