"""Auto top-up's PaymentIntents: claim the wanted top-ups, charge the saved payment method
off-session through the Stripe SDK, and apply the outcome.

The ledger only records that a top-up is wanted (ledger/top_ups.py); Stripe is called here, by the
webhook processor's rounds, never inside a ledger transaction:

1. claim (one transaction, system path): WANTED rows, oldest first, `FOR UPDATE SKIP LOCKED` (two
   instances never take the same row). Each becomes PENDING with `started_at`, the pack's price
   and credits, and an OPEN `TOP_UP` invoice (`invoice.created`); or SKIPPED when auto top-up is
   off by now, when the project has no saved payment method (`lastStatus: NO_PAYMENT_METHOD`,
   no Stripe call), or when the wallet's balance is back at or above the threshold (something
   credited it since the crossing: the top-up is no longer wanted; the settings' `lastStatus`
   stays as it was, the attempt's `error` says why). That last decision is taken under the
   wallet's lock (see `_credited_back`).
2. after the commit: one PaymentIntent per claimed row (`off_session`, `confirm`), with the Stripe
   idempotency key `ledgerx:auto-top-up:<attempt id>`; its id is recorded on the row. A row left
   PENDING without an intent for `LOST_AFTER` (the process died, or Stripe could not be reached)
   is claimed again and asks Stripe again with the same key: Stripe answers with the same intent,
   so a top-up is never charged twice.
3. the outcome: `payment_intent.succeeded` credits the pack (`succeeded`: one PAID grant, keyed by
   the intent, so replays credit once), pays the invoice and records the Payment; a decline (the
   intent Stripe answers with, or `payment_intent.payment_failed`) is `failed`: FAILED, the invoice
   voided, `invoice.payment_failed`, a TOP_UP_FAILED mail. Each outcome is applied once, under
   the attempt row's lock.
4. recovery of a lost outcome event (`recover`, in the same round): a row PENDING with an intent
   whose `started_at` is older than `RECOVER_AFTER` (its event never came: an endpoint
   misconfigured, an event lost) is leased (`started_at` := now, committed, SKIP LOCKED: one
   worker looks) and Stripe is asked for the intent. `succeeded` and a decline (`DECLINED`: as
   `_charge` reads the intent it creates; `requires_action` too, since off-session nobody
   authenticates it) apply exactly what the webhook handlers apply (the same functions, so the
   event arriving later changes nothing); any other status (`processing`, ...) is left for the
   next look, `RECOVER_AFTER` later. For a PENDING row with an intent, `started_at` is thus when
   Stripe was last asked about it (no column of its own: no migration). A look Stripe could not
   answer (unreachable, 5xx, rate limited) is due again `LOST_AFTER` later (`started_at` is set
   back accordingly); one it refused (the intent unknown, the API key refused) waits the whole
   interval. A Stripe error never stops the round.

One in flight per wallet: the partial unique index over WANTED/PENDING rows. No retry storm: a
failed top-up is retried only by a new crossing (the balance must first be credited back to the
threshold) or by saving the settings again (top_ups.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import AutoTopUp, AutoTopUpAttempt, CreditPack, Invoice, Payment, PaymentCustomer
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError
from ledgerx.domain.invoicing import composing, issuing, tax_rates
from ledgerx.domain.ledger.types import Kind, Posted
from ledgerx.domain.notifications import amounts, links
from ledgerx.domain.notifications.kinds import Kind as Mail
from ledgerx.domain.notifications.notify import notify
from ledgerx.domain.payments import grants, objects, webhook_events
from ledgerx.domain.payments.objects import Obj
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.domain.payments.top_ups import FAILED, NO_PAYMENT_METHOD, PENDING, SUCCEEDED
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.payments.top_up")

META_ATTEMPT = "ledgerx_auto_top_up_id"
STRIPE_TAX_NOTE = "No tax: Stripe Tax does not price automatic top-ups (TAX_MODE=stripe)."
LOST_AFTER = dt.timedelta(seconds=60)
# How long an intent's outcome event may take before the worker asks Stripe itself, and how often
# it asks again about an intent that is still undecided (`processing`): Stripe sends the event
# within seconds, so a quarter of an hour means it was lost, and one look per attempt per quarter
# hour is nothing to Stripe's rate limits.
RECOVER_AFTER = dt.timedelta(minutes=15)
CLAIM_LIMIT = 20
# The statuses of an off-session intent that will not be paid without the customer.
DECLINED = ("requires_payment_method", "requires_action", "canceled")

_BALANCE = text("SELECT balance FROM wallets WHERE id = :w")
_BALANCE_LOCKED = text("SELECT balance FROM wallets WHERE id = :w FOR UPDATE SKIP LOCKED")


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A claimed attempt: what the PaymentIntent is made of."""

    attempt_id: uuid.UUID
    project_id: uuid.UUID
    wallet_id: uuid.UUID
    customer: str
    payment_method: str
    amount: int
    currency: str
    credits: int
    credit_pack_id: uuid.UUID
    invoice_id: uuid.UUID

    def params(self) -> dict[str, Any]:
        meta = {
            objects.META_PROJECT: ids.encode("project", self.project_id),
            objects.META_WALLET: ids.encode("wallet", self.wallet_id),
            objects.META_PACK: ids.encode("credit_pack", self.credit_pack_id),
            objects.META_CREDITS: str(self.credits),
            objects.META_INVOICE: ids.encode("invoice", self.invoice_id),
            META_ATTEMPT: str(self.attempt_id),
        }
        return {
            "amount": self.amount,
            "currency": self.currency.lower(),
            "customer": self.customer,
            "payment_method": self.payment_method,
            "off_session": True,
            "confirm": True,
            "description": f"Auto top-up: {self.credits} credits",
            "metadata": meta,
        }


async def run_once(svc: PaymentsService, limit: int = CLAIM_LIMIT) -> int:
    """One round: claim, call Stripe for each claimed attempt, then look up the intents whose
    outcome event is overdue (`recover`). Returns how many were claimed."""
    if svc.stripe is None:
        return 0  # payments are not configured: the wanted rows wait (one per wallet at most)
    jobs, claimed = await _claim(svc, limit)
    for job in jobs:
        await _charge(svc, job)
    await recover(svc, limit)
    return claimed


async def _claim(svc: PaymentsService, limit: int) -> tuple[list[Job], int]:
    now = svc.now()
    jobs: list[Job] = []
    async with svc.db.transaction(system=True) as s:
        rows = list(
            await s.scalars(
                select(AutoTopUpAttempt)
                .where(
                    or_(
                        AutoTopUpAttempt.status == "WANTED",
                        (AutoTopUpAttempt.status == "PENDING")
                        & AutoTopUpAttempt.stripe_payment_intent_id.is_(None)
                        & (AutoTopUpAttempt.started_at < now - LOST_AFTER),
                    )
                )
                .order_by(AutoTopUpAttempt.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for a in rows:
            job = await _start(svc, s, a, now)
            if job is not None:
                jobs.append(job)
    return jobs, len(rows)


async def _start(svc: PaymentsService, s: AsyncSession, a: AutoTopUpAttempt, now: dt.datetime) -> Job | None:
    settings = await s.get(AutoTopUp, a.wallet_id, with_for_update=True)
    customer = await s.get(PaymentCustomer, a.project_id)
    if a.status == "PENDING":  # lost before Stripe answered: ask again with the same key
        a.started_at = now
        if customer is None or customer.default_payment_method is None:
            await _fail(svc, s, a, None, "the saved payment method is gone", now)
            return None
        return _job(a, customer)
    if settings is None or not settings.enabled:
        _skip(a, "auto top-up is off", now)
        return None
    stale = await _credited_back(s, a.wallet_id, settings.threshold)
    if stale is None:
        return None  # a posting holds the wallet: left WANTED, decided by the next round
    if stale:
        _skip(a, "the balance is back at or above the threshold (credited since the crossing)", now)
        log.info("auto top-up %s skipped: the wallet was credited back above the threshold", a.id)
        return None
    settings.last_attempt_at = now
    if customer is None or customer.default_payment_method is None:
        _skip(a, "the project has no saved payment method", now)
        settings.last_status, settings.last_error = NO_PAYMENT_METHOD, "buy a credit pack through Checkout first"
        return None
    pack = await s.get(CreditPack, settings.credit_pack_id)
    if pack is None or pack.archived_at is not None:
        _skip(a, "the credit pack is archived", now)
        settings.last_status, settings.last_error = FAILED, "the credit pack is archived"
        return None
    # LedgerX sets this charge's amount itself: the pack's price plus the exclusive tax it computes
    # (TAX_MODE=rates; Stripe Tax does not price a bare PaymentIntent, so TAX_MODE=stripe charges
    # no tax on top-ups and the invoice says so).
    choice = await tax_rates.choose(svc, s, a.project_id)
    if choice.mode == "stripe":
        choice = dataclasses.replace(choice, note=STRIPE_TAX_NOTE)
    items = [composing.item(f"Auto top-up: {pack.name} ({pack.credits:,} credits)", pack.price_amount)]
    comp = composing.compute(items, 0, choice)
    invoice = Invoice(
        id=uuid7(),
        project_id=a.project_id,
        kind="TOP_UP",
        billing_reason="auto_top_up",
        status="OPEN",
        currency=pack.currency,
        credits=pack.credits,
    )
    await composing.write(s, invoice, comp, choice=choice)
    a.status, a.started_at, a.invoice_id = "PENDING", now, invoice.id
    a.credit_pack_id, a.credits, a.amount, a.currency = pack.id, pack.credits, comp.total, pack.currency
    settings.last_status, settings.last_error = PENDING, None
    await webhook_events.invoice(s, invoice, ["invoice.created"])
    await _audit(s, a, "wallet.auto_top_up.start", invoiceId=ids.encode("invoice", invoice.id))
    return _job(a, customer)


def _job(a: AutoTopUpAttempt, customer: PaymentCustomer) -> Job:
    assert customer.default_payment_method is not None
    assert a.invoice_id is not None
    assert a.credit_pack_id is not None
    assert a.amount is not None
    assert a.currency is not None
    assert a.credits is not None
    return Job(
        a.id,
        a.project_id,
        a.wallet_id,
        customer.stripe_customer_id,
        customer.default_payment_method,
        a.amount,
        a.currency,
        a.credits,
        a.credit_pack_id,
        a.invoice_id,
    )


async def _credited_back(s: AsyncSession, wallet_id: uuid.UUID, threshold: int) -> bool | None:
    """Whether the wallet's balance is back at or above `threshold` (the wanted top-up is stale);
    None: it cannot be decided now.

    Still low (the usual case) is decided without the wallet's lock: charging then is right
    whatever happens next. Back up is decided under it: skipping frees the wallet's in-flight
    slot only at our commit, so a debit crossing again meanwhile would find this row WANTED, add
    nothing (ON CONFLICT DO NOTHING) and its crossing would be lost. SKIP LOCKED: the claim holds
    attempt rows and never waits on a wallet (the ledger and setAutoTopUp lock the wallet first)."""
    balance = await s.scalar(_BALANCE, {"w": wallet_id})
    if balance is None or balance < threshold:
        return False
    balance = await s.scalar(_BALANCE_LOCKED, {"w": wallet_id})
    if balance is None:
        return None
    return bool(balance >= threshold)


def _skip(a: AutoTopUpAttempt, why: str, now: dt.datetime) -> None:
    a.status, a.error, a.finished_at = "SKIPPED", why, now


async def _charge(svc: PaymentsService, job: Job) -> None:
    """Create the PaymentIntent (outside any transaction) and record what Stripe answered."""
    try:
        intent = await svc.require_stripe().create_off_session_payment(
            job.params(), f"ledgerx:auto-top-up:{job.attempt_id}"
        )
    except AppError as exc:
        if exc.extra.get("retryable"):
            log.warning("auto top-up %s: Stripe failed (%s); asking again later", job.attempt_id, exc)
            return  # PENDING without an intent: claimed again after LOST_AFTER
        async with svc.db.transaction(system=True) as s:
            a = await _locked(s, job.attempt_id)
            if a is not None:
                await _fail(svc, s, a, None, str(exc), svc.now())
        return
    intent_id = str(intent["id"])
    async with svc.db.transaction(system=True) as s:
        await s.execute(
            update(AutoTopUpAttempt)
            .where(AutoTopUpAttempt.id == job.attempt_id, AutoTopUpAttempt.stripe_payment_intent_id.is_(None))
            .values(stripe_payment_intent_id=intent_id)
        )
        if intent.get("status") in DECLINED:
            a = await _locked(s, job.attempt_id)
            if a is not None:
                await _fail(svc, s, a, intent_id, decline_message(intent), svc.now())
    # "succeeded" or "processing": payment_intent.succeeded / .payment_failed apply the outcome.


def decline_message(intent: Obj) -> str:
    err = objects.obj(intent.get("last_payment_error"))
    if intent.get("status") == "requires_action":
        return "the payment needs the customer's authentication (not possible off-session)"
    if intent.get("status") == "canceled" and not err:
        return f"the payment was canceled ({intent.get('cancellation_reason') or 'at Stripe'})"[:500]
    return str(err.get("message") or err.get("code") or "the payment failed")[:500]


async def recover(svc: PaymentsService, limit: int = CLAIM_LIMIT) -> int:
    """Ask Stripe about the PENDING intents whose outcome event is overdue (step 4 of the module
    doc) and apply what it says. Returns how many were looked up. Never raises for one attempt:
    the others are still looked at, and the round goes on."""
    due = await _lease_overdue(svc, limit)
    for attempt_id, intent_id in due:
        try:
            await _look(svc, attempt_id, intent_id)
        except Exception:
            # Not Stripe (handled in _look): applying the outcome failed. Leased, so looked at
            # again after RECOVER_AFTER; the webhook may still bring the event meanwhile.
            log.exception("auto top-up %s: applying intent %s failed", attempt_id, intent_id)
    return len(due)


async def _lease_overdue(svc: PaymentsService, limit: int) -> list[tuple[uuid.UUID, str]]:
    """The overdue rows, each leased for RECOVER_AFTER (`started_at` := now, committed before
    Stripe is asked): two workers at once never look up the same intent."""
    now = svc.now()
    async with svc.db.transaction(system=True) as s:
        rows = (
            await s.execute(
                select(AutoTopUpAttempt.id, AutoTopUpAttempt.stripe_payment_intent_id)
                .where(
                    AutoTopUpAttempt.status == "PENDING",
                    AutoTopUpAttempt.stripe_payment_intent_id.is_not(None),
                    AutoTopUpAttempt.started_at < now - RECOVER_AFTER,
                )
                .order_by(AutoTopUpAttempt.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if rows:
            await s.execute(
                update(AutoTopUpAttempt)
                .where(AutoTopUpAttempt.id.in_([r.id for r in rows]))
                .values(started_at=now)
                .execution_options(synchronize_session=False)
            )
    return [(r.id, str(r.stripe_payment_intent_id)) for r in rows]


async def _look(svc: PaymentsService, attempt_id: uuid.UUID, intent_id: str) -> None:
    try:
        intent = await svc.require_stripe().retrieve_payment_intent(intent_id)
    except AppError as exc:
        retryable = bool(exc.extra.get("retryable"))
        log.warning(
            "auto top-up %s: Stripe could not say how intent %s ended (%s); asking again in %s",
            attempt_id,
            intent_id,
            exc,
            LOST_AFTER if retryable else RECOVER_AFTER,
        )
        if retryable:  # Stripe unreachable or overloaded: sooner than a whole interval
            async with svc.db.transaction(system=True) as s:
                await s.execute(
                    update(AutoTopUpAttempt)
                    .where(AutoTopUpAttempt.id == attempt_id, AutoTopUpAttempt.status == "PENDING")
                    .values(started_at=svc.now() - RECOVER_AFTER + LOST_AFTER)
                    .execution_options(synchronize_session=False)
                )
        return
    status = intent.get("status")
    if intent.get("id") != intent_id:
        log.error("auto top-up %s: Stripe answered intent %s for %s", attempt_id, intent.get("id"), intent_id)
        return
    if status == "succeeded":
        # What payment_intent.succeeded applies (handlers/payment_intent.py), in the same order:
        # the credit (keyed by the intent) first, then the attempt under its lock.
        async with svc.db.transaction(system=True) as s:
            found = await s.get(AutoTopUpAttempt, attempt_id)
            if found is None:
                return
            _, payment = await succeeded(svc, s, found, intent, Actor.system())
        if payment is not None:
            log.info("auto top-up %s: intent %s succeeded (its event never came): credited", attempt_id, intent_id)
            svc.publish([grants.payment_event("payment.succeeded", payment)])
    elif status in DECLINED:
        async with svc.db.transaction(system=True) as s:
            a = await _locked(s, attempt_id)
            if a is not None and await failed(svc, s, a, intent):
                log.info("auto top-up %s: intent %s was declined (its event never came)", attempt_id, intent_id)
    else:
        log.info("auto top-up %s: intent %s is %s; looking again in %s", attempt_id, intent_id, status, RECOVER_AFTER)


async def _locked(s: AsyncSession, attempt_id: uuid.UUID) -> AutoTopUpAttempt | None:
    return await s.get(AutoTopUpAttempt, attempt_id, with_for_update=True, populate_existing=True)


async def attempt_of(s: AsyncSession, intent: Obj, *, lock: bool = True) -> AutoTopUpAttempt | None:
    """The attempt an intent belongs to (locked unless `lock=False`), by our metadata, else by the
    intent's id."""
    raw = objects.metadata(intent).get(META_ATTEMPT)
    attempt_id: uuid.UUID | None = None
    if raw:
        try:
            attempt_id = uuid.UUID(raw)
        except ValueError:
            attempt_id = None
    if attempt_id is None:
        attempt_id = await s.scalar(
            select(AutoTopUpAttempt.id).where(AutoTopUpAttempt.stripe_payment_intent_id == str(intent.get("id")))
        )
    if attempt_id is None:
        return None
    return await _locked(s, attempt_id) if lock else await s.get(AutoTopUpAttempt, attempt_id)


async def succeeded(
    svc: PaymentsService, s: AsyncSession, found: AutoTopUpAttempt, intent: Obj, actor: Actor
) -> tuple[Posted | None, Payment | None]:
    """The top-up was paid: credit the pack once, pay the invoice, record the Payment (in `s`).

    `found` is read without a lock: the credit comes first (it takes the wallet's lock), then the
    attempt's lock, the order of the ledger and setAutoTopUp (wallet, then attempt), so a debit
    crossing the threshold meanwhile cannot deadlock with this handler. The posting's key makes
    two deliveries at once credit once; the attempt's status under its lock decides the rest."""
    credits, invoice_id, pack_id = found.credits, found.invoice_id, found.credit_pack_id
    if found.status in ("WANTED", "SKIPPED") or credits is None or invoice_id is None:
        return None, None  # not ours to credit (never charged)
    intent_id = str(intent["id"])
    posted = await grants.post_credits(
        svc,
        s,
        project_id=found.project_id,
        wallet_id=found.wallet_id,
        credits=credits,
        kind=Kind.PURCHASE,
        key=f"stripe:payment_intent:{intent_id}",
        reference=intent_id,
        reason="Auto top-up",
        metadata={
            "stripePaymentIntentId": intent_id,
            "creditPackId": ids.encode("credit_pack", pack_id) if pack_id else None,
            "invoiceId": ids.encode("invoice", invoice_id),
        },
        terms=grants.pack_credit_terms(await grants.pack_validity(s, pack_id), svc.ledger.now()),
    )
    a = await _locked(s, found.id)
    if a is None or a.status == "SUCCEEDED" or a.invoice_id is None:
        return posted, None
    now = svc.now()
    paid = objects.integer(intent.get("amount_received")) or objects.integer(intent.get("amount"))
    charge = objects.ref(intent.get("latest_charge"))
    invoice = await s.get(Invoice, a.invoice_id, with_for_update=True)
    assert invoice is not None
    invoice.status, invoice.amount_paid, invoice.paid_at = "PAID", paid, now
    invoice.attempt_count = max(invoice.attempt_count, 1)
    invoice.grant_transaction_id = posted.transaction.id
    invoice.stripe_payment_intent_id, invoice.stripe_charge_id = intent_id, charge
    invoice.updated_at = now
    payment = Payment(
        id=uuid7(),
        project_id=a.project_id,
        kind="CREDIT_PACK",
        status="SUCCEEDED",
        amount=paid,
        currency=invoice.currency,
        credits=a.credits,
        credit_pack_id=a.credit_pack_id,
        invoice_id=invoice.id,
        wallet_id=a.wallet_id,
        transaction_id=posted.transaction.id,
        stripe_payment_intent_id=intent_id,
        stripe_charge_id=charge,
    )
    s.add(payment)
    a.status, a.finished_at, a.stripe_payment_intent_id, a.error = "SUCCEEDED", now, intent_id, None
    await s.execute(
        update(AutoTopUp)
        .where(AutoTopUp.wallet_id == a.wallet_id)
        .values(last_status=SUCCEEDED, last_error=None, updated_at=now)
    )
    await issuing.issue(svc, s, invoice)
    await webhook_events.invoice(s, invoice, ["invoice.paid"])
    await s.flush()
    await s.refresh(payment)
    await webhook_events.payment(s, "payment.succeeded", payment)
    await _audit(s, a, "wallet.auto_top_up.succeeded", actor=actor, stripePaymentIntentId=intent_id)
    return posted, payment


async def failed(
    svc: PaymentsService, s: AsyncSession, a: AutoTopUpAttempt, intent: Obj, actor: Actor | None = None
) -> bool:
    """`payment_intent.payment_failed`: as a decline the worker saw (once, whoever is first)."""
    return await _fail(svc, s, a, str(intent["id"]), decline_message(intent), svc.now(), actor=actor)


async def _fail(
    svc: PaymentsService,
    s: AsyncSession,
    a: AutoTopUpAttempt,
    intent_id: str | None,
    why: str,
    now: dt.datetime,
    *,
    actor: Actor | None = None,
) -> bool:
    if a.status != "PENDING":
        return False  # already decided (a second delivery, or the worker saw the decline first)
    a.status, a.finished_at, a.error = "FAILED", now, why
    if intent_id is not None:
        a.stripe_payment_intent_id = intent_id
    await s.execute(
        update(AutoTopUp)
        .where(AutoTopUp.wallet_id == a.wallet_id)
        .values(last_status=FAILED, last_error=why, updated_at=now)
    )
    invoice = await s.get(Invoice, a.invoice_id, with_for_update=True) if a.invoice_id is not None else None
    if invoice is not None:
        invoice.attempt_count += 1
        invoice.first_failed_at = invoice.first_failed_at or now
        invoice.last_failed_at = now
        invoice.stripe_payment_intent_id = intent_id
        # Not collected: a later top-up makes a new invoice (this one is never charged again).
        invoice.status, invoice.updated_at = "VOID", now
        await webhook_events.invoice(s, invoice, ["invoice.payment_failed"])
    await notify(
        s,
        a.project_id,
        Mail.TOP_UP_FAILED,
        intent_id or f"auto-top-up:{a.id}",
        {
            "amount": amounts.amount(a.amount or 0, a.currency or "USD"),
            "wallet_id": ids.encode("wallet", a.wallet_id),
            "invoice_id": ids.encode("invoice", a.invoice_id) if a.invoice_id else "none",
            "reason": why,
            "portal_url": links.billing_page(svc.settings.public_url, a.project_id),
        },
    )
    await _audit(s, a, "wallet.auto_top_up.failed", actor=actor, stripePaymentIntentId=intent_id, error=why)
    return True


async def _audit(
    s: AsyncSession, a: AutoTopUpAttempt, action: str, *, actor: Actor | None = None, **after: Any
) -> None:
    await audit.record(
        s,
        actor or Actor.system(),
        action,
        project_id=a.project_id,
        target_type="wallet",
        target_id=ids.encode("wallet", a.wallet_id),
        after={"attemptId": str(a.id), **after},
    )
