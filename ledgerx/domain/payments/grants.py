"""Credits bought through Stripe: the target wallet, the ledger postings, the Payment records.

Every posting's idempotency key is derived from a Stripe id (`stripe:checkout:<session>`,
`stripe:invoice:<invoice>`, `stripe:refund:<refund>`, `stripe:dispute:<dispute>`), and its content
depends only on that Stripe object and LedgerX state that does not change in between, so a
second delivery, a replay or reconciliation returns the first transaction instead of posting
again. The postings run inside the caller's transaction (`session=`), atomically with the
Payment/Invoice rows that record them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
import weakref
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import CreditPack, Invoice, Payment, Plan, Wallet
from ledgerx.domain import topics
from ledgerx.domain.actor import Actor
from ledgerx.domain.ledger.posting import post_transaction
from ledgerx.domain.ledger.types import (
    CREDITS,
    GrantCategory,
    GrantTerms,
    Kind,
    Leg,
    Posted,
    Posting,
    SystemAccount,
)
from ledgerx.domain.ledger.wallets import create_wallet
from ledgerx.domain.payments import webhook_events
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

DEFAULT_WALLET_NAME = "Default"
_locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = weakref.WeakValueDictionary()


def payments_topic(project_id: uuid.UUID) -> str:
    return topics.project_payments(project_id)


async def _find_default(s: AsyncSession, project_id: uuid.UUID) -> uuid.UUID | None:
    return await s.scalar(
        select(Wallet.id)
        .where(Wallet.project_id == project_id, Wallet.currency == CREDITS, Wallet.owner_user_id.is_(None))
        .order_by(Wallet.id)
        .limit(1)
    )


async def default_wallet(svc: PaymentsService, project_id: uuid.UUID) -> uuid.UUID:
    """The project's default wallet: its oldest CREDITS wallet without an owner, created if none.

    Creation is serialized per project (an in-process lock, so waiting never ties up more than one
    pooled connection, and an advisory lock across instances), so two payments racing on a new
    project still find one wallet.
    """
    async with svc.db.transaction(project_id=project_id) as s:
        found = await _find_default(s, project_id)
    if found is not None:
        return found
    lock = _locks.setdefault(project_id, asyncio.Lock())
    async with lock, svc.db.transaction(project_id=project_id) as s:
        await s.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"ledgerx:default-wallet:{project_id}"},
        )
        found = await _find_default(s, project_id)
        if found is not None:
            return found
        created = await create_wallet(
            svc.ledger, Actor.system(), project_id, name=DEFAULT_WALLET_NAME, currency=CREDITS
        )
        return created.id


async def wallet_for(svc: PaymentsService, project_id: uuid.UUID, wallet_id: uuid.UUID | None) -> uuid.UUID:
    """The wallet named in the checkout metadata when it is a CREDITS wallet of the project, else
    the project's default wallet."""
    if wallet_id is not None:
        async with svc.db.transaction(project_id=project_id) as s:
            row = (await s.execute(select(Wallet.project_id, Wallet.currency).where(Wallet.id == wallet_id))).first()
        if row is not None and row.project_id == project_id and row.currency == CREDITS:
            return wallet_id
    return await default_wallet(svc, project_id)


async def post_credits(
    svc: PaymentsService,
    s: AsyncSession,
    *,
    project_id: uuid.UUID,
    wallet_id: uuid.UUID,
    credits: int,
    kind: Kind,
    key: str,
    reference: str,
    reason: str,
    metadata: dict[str, Any],
    terms: GrantTerms | None = None,
) -> Posted:
    """Credits into a wallet from the project's EXTERNAL_FUNDING account (money paid outside), as
    one credit grant: PAID without expiry unless `terms` say otherwise (`pack_credit_terms`,
    `plan_credit_terms`)."""
    return await post_transaction(
        svc.ledger,
        Posting(
            project_id=project_id,
            wallet_id=wallet_id,
            kind=kind,
            currency=CREDITS,
            legs=(Leg(credits, wallet_id=wallet_id), Leg(-credits, system=SystemAccount.EXTERNAL_FUNDING)),
            idempotency_key=key,
            actor=Actor.system(),
            reference=reference,
            reason=reason,
            metadata=metadata,
            action=f"payments.{kind.value.lower()}",
            terms=terms,
        ),
        session=s,
    )


def plan_credit_terms(invoice: Invoice, now: dt.datetime, *, rollover: bool = False) -> GrantTerms:
    """Plan credits are PROMOTIONAL and expire at the end of the period they were included for
    (an invoice paid after its period ended: no expiry, so a late payment does not lose them at
    once); a plan with `rolloverCredits` keeps them without expiry."""
    end = invoice.period_end
    keep = rollover or end is None or end <= now
    return GrantTerms(GrantCategory.PROMOTIONAL, expires_at=None if keep else end)


def pack_credit_terms(validity_days: int | None, now: dt.datetime) -> GrantTerms:
    """The terms of a credit pack purchase (Checkout or auto top-up): PAID, expiring `validityDays`
    after the payment is recorded when the pack sets it. `now` is the ledger's clock, the one
    that stamps the grant, as plan credits compare their period end with (payments do not follow
    a project's test clock)."""
    return GrantTerms(GrantCategory.PAID, expires_at=now + dt.timedelta(days=validity_days) if validity_days else None)


async def pack_validity(s: AsyncSession, pack_id: uuid.UUID | None) -> int | None:
    """The pack's `validityDays` as it is now (None: no expiry, or no pack)."""
    if pack_id is None:
        return None
    days = await s.scalar(select(CreditPack.validity_days).where(CreditPack.id == pack_id))
    return int(days) if days is not None else None


async def _rollover(s: AsyncSession, plan_id: uuid.UUID | None) -> bool:
    if plan_id is None:
        return False
    return bool(await s.scalar(select(Plan.rollover_credits).where(Plan.id == plan_id)))


async def grant_invoice(
    svc: PaymentsService, s: AsyncSession, invoice: Invoice, *, wallet_id: uuid.UUID, discount: int = 0
) -> Posted | None:
    """Grant a paid invoice's credits once (keyed by the Stripe invoice) and record its Payment
    (announced as `payment.succeeded` when this call recorded it), with `discount`: what coupons
    took off the invoice (Stripe's `total_discount_amounts`)."""
    assert invoice.stripe_invoice_id is not None
    posted: Posted | None = None
    if invoice.credits > 0 and invoice.grant_transaction_id is None:
        reason = (
            "Prorated included credits of the upgrade"
            if invoice.kind == "PRORATION"
            else "Included credits of the subscription period"
        )
        posted = await post_credits(
            svc,
            s,
            project_id=invoice.project_id,
            wallet_id=wallet_id,
            credits=invoice.credits,
            kind=Kind.SUBSCRIPTION,
            key=f"stripe:invoice:{invoice.stripe_invoice_id}",
            reference=invoice.stripe_invoice_id,
            reason=reason,
            terms=plan_credit_terms(invoice, svc.ledger.now(), rollover=await _rollover(s, invoice.plan_id)),
            metadata={
                "stripeInvoiceId": invoice.stripe_invoice_id,
                "invoiceId": ids.encode("invoice", invoice.id),
                "planId": ids.encode("plan", invoice.plan_id) if invoice.plan_id else None,
            },
        )
        invoice.grant_transaction_id = posted.transaction.id
    if invoice.amount_paid > 0:
        payment = await s.scalar(
            pg_insert(Payment)
            .values(
                id=uuid7(),
                project_id=invoice.project_id,
                kind="SUBSCRIPTION",
                status="SUCCEEDED",
                amount=invoice.amount_paid,
                discount=discount,
                currency=invoice.currency,
                credits=invoice.credits if invoice.grant_transaction_id else 0,
                plan_id=invoice.plan_id,
                invoice_id=invoice.id,
                wallet_id=wallet_id if invoice.grant_transaction_id else None,
                transaction_id=invoice.grant_transaction_id,
                stripe_invoice_id=invoice.stripe_invoice_id,
                stripe_payment_intent_id=invoice.stripe_payment_intent_id,
                stripe_charge_id=invoice.stripe_charge_id,
            )
            .on_conflict_do_nothing(index_elements=["stripe_invoice_id"])
            .returning(Payment)
        )
        if payment is not None:
            await webhook_events.payment(s, "payment.succeeded", payment)
    return posted


def payment_event(kind: str, p: Payment) -> tuple[str, dict[str, Any]]:
    return (
        payments_topic(p.project_id),
        {
            "type": kind,
            "paymentId": ids.encode("payment", p.id),
            "projectId": ids.encode("project", p.project_id),
            "kind": p.kind,
            "status": p.status,
            "amount": str(p.amount),
            "currency": p.currency,
            "credits": str(p.credits),
        },
    )
