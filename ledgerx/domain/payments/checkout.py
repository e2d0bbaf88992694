"""Stripe Checkout: one Stripe Customer per project (created once) and checkout sessions for a
credit pack (payment mode) or a plan (subscription mode), with LedgerX ids in their metadata."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import PaymentCustomer, PlanSubscription, Project, Wallet
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError, BadInput, Conflict, NotFound
from ledgerx.domain.invoicing import tax_rates
from ledgerx.domain.ledger.types import CREDITS
from ledgerx.domain.payments import catalog, objects, prices, redemptions, subscriptions
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.settings import Settings

log = logging.getLogger("ledgerx.payments.checkout")


@dataclasses.dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` as a browser compares origins (case-folded, default port dropped)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")


def redirect_url(value: str, field: str, settings: Settings) -> str:
    """A URL Stripe Checkout (or the billing portal) may send the customer back to. In production
    only to our own origins (`checkout_origins`): anything else would make our Checkout an open
    redirect that lends a phishing page the trust of a real payment."""
    v = (value or "").strip()
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(v) > 2048:
        raise BadInput("expected an http(s) URL", field=field)
    if parts.username is not None or parts.password is not None:
        raise BadInput("the URL must not hold a user name or password", field=field)
    if settings.production:
        allowed = {o for o in map(origin_of, settings.checkout_origins) if o is not None}
        if origin_of(v) not in allowed:
            raise BadInput(f"{field} must be on one of this server's origins (CHECKOUT_REDIRECT_ORIGINS)", field=field)
    return v


async def ensure_customer(svc: PaymentsService, project_id: uuid.UUID) -> str:
    """The project's Stripe Customer id, created on first use (once, even under concurrency)."""
    async with svc.db.transaction(project_id=project_id) as s:
        found = await s.scalar(
            select(PaymentCustomer.stripe_customer_id).where(PaymentCustomer.project_id == project_id)
        )
    if found is not None:
        return found
    stripe = svc.require_stripe()
    public = ids.encode("project", project_id)
    async with svc.db.transaction(project_id=project_id) as s:
        await s.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"ledgerx:customer:{project_id}"}
        )
        found = await s.scalar(
            select(PaymentCustomer.stripe_customer_id).where(PaymentCustomer.project_id == project_id)
        )
        if found is not None:
            return found
        name = await s.scalar(select(Project.name).where(Project.id == project_id))
        if name is None:
            raise NotFound("project not found", field="projectId")
        # The idempotency key makes a retry after a lost response return the same customer.
        customer = await stripe.create_customer(name, {objects.META_PROJECT: public}, f"ledgerx:customer:{public}")
        customer_id = str(customer["id"])
        s.add(PaymentCustomer(project_id=project_id, stripe_customer_id=customer_id))
        await audit.record(
            s,
            Actor.system(),
            "payments.customer.create",
            project_id=project_id,
            target_type="project",
            target_id=public,
            after={"stripeCustomerId": customer_id},
        )
    return customer_id


async def create_checkout_session(
    svc: PaymentsService,
    actor: Actor,
    project_id: uuid.UUID,
    *,
    credit_pack_id: uuid.UUID | None,
    plan_id: uuid.UUID | None,
    success_url: str,
    cancel_url: str,
    wallet_id: uuid.UUID | None = None,
    coupon_code: str | None = None,
) -> CheckoutSession:
    if (credit_pack_id is None) == (plan_id is None):
        raise BadInput("give exactly one of creditPackId and planId", field="creditPackId")
    success = redirect_url(success_url, "successUrl", svc.settings)
    cancel = redirect_url(cancel_url, "cancelUrl", svc.settings)
    stripe = svc.require_stripe()
    project_public = ids.encode("project", project_id)
    meta: dict[str, str] = {objects.META_PROJECT: project_public}
    if wallet_id is not None:
        async with svc.db.transaction(project_id=project_id) as s:
            w = (await s.execute(select(Wallet.project_id, Wallet.currency).where(Wallet.id == wallet_id))).first()
        if w is None or w.project_id != project_id:
            raise NotFound("wallet not found", field="walletId")
        if w.currency != CREDITS:
            raise BadInput("credits go into a CREDITS wallet", field="walletId")
        meta[objects.META_WALLET] = ids.encode("wallet", wallet_id)

    params: dict[str, Any] = {
        "success_url": success,
        "cancel_url": cancel,
        "client_reference_id": project_public,
    }
    target: dict[str, Any]
    if credit_pack_id is not None:
        pack = await catalog.get_credit_pack(svc, credit_pack_id)
        if pack.archived_at is not None:
            raise BadInput("this credit pack is archived", field="creditPackId")
        pack = await prices.ensure_pack_price(svc, pack)
        meta[objects.META_PACK] = ids.encode("credit_pack", pack.id)
        # The credits and their validity are fixed when the customer sees the price, whatever the
        # pack becomes later.
        meta[objects.META_CREDITS] = str(pack.credits)
        meta[objects.META_VALIDITY] = str(pack.validity_days or 0)
        params.update(
            mode="payment",
            line_items=[{"price": pack.stripe_price_id, "quantity": 1}],
            # Stripe keeps the card for off-session use: auto top-up charges it later (the
            # payment_intent.succeeded handler records it as the project's payment method).
            payment_intent_data={"metadata": meta, "setup_future_usage": "off_session"},
        )
        target = {"creditPackId": meta[objects.META_PACK], "credits": str(pack.credits)}
        used_on = redemptions.Target(None, pack.id, pack.currency)
    else:
        assert plan_id is not None
        plan = await catalog.get_plan(svc, plan_id)
        if plan.archived_at is not None:
            raise BadInput("this plan is archived", field="planId")
        if plan.tier == "FREE" or plan.price_amount == 0:
            raise BadInput("the free plan needs no checkout", field="planId")
        plan = await prices.ensure_plan_price(svc, plan)
        async with svc.db.transaction(project_id=project_id) as s:
            current = await subscriptions.current_subscription(s, project_id)
            had_any = await s.scalar(
                select(PlanSubscription.id).where(PlanSubscription.project_id == project_id).limit(1)
            )
        if current is not None and subscriptions.is_live(current) and current.stripe_status != "incomplete":
            raise Conflict("the project already has a subscription; use changePlan", field="planId")
        meta[objects.META_PLAN] = ids.encode("plan", plan.id)
        sub_data: dict[str, Any] = {"metadata": meta}
        if plan.trial_days > 0 and had_any is None:
            sub_data["trial_period_days"] = plan.trial_days
        params.update(
            mode="subscription",
            line_items=[{"price": plan.stripe_price_id, "quantity": 1}],
            subscription_data=sub_data,
        )
        target = {"planId": meta[objects.META_PLAN], "trialDays": sub_data.get("trial_period_days", 0)}
        used_on = redemptions.Target(plan.id, None, plan.currency)
    async with svc.db.transaction(project_id=project_id) as s:
        choice = await tax_rates.choose(svc, s, project_id)
    _charge_tax(params, await tax_rates.ensure_stripe_rate(svc, choice), meta)
    params["customer"] = await ensure_customer(svc, project_id)
    params["metadata"] = meta
    if coupon_code is not None:
        return await _with_coupon(svc, actor, project_id, coupon_code, used_on, params, target, wallet_id)
    session = await stripe.create_checkout_session(params)
    result = CheckoutSession(str(session["id"]), str(session.get("url") or ""))
    async with svc.db.transaction(project_id=project_id) as s:
        await _audit(s, actor, project_id, result, params, target)
    return result


def _charge_tax(params: dict[str, Any], choice: tax_rates.TaxChoice, meta: dict[str, str]) -> None:
    """Make Checkout charge the tax the invoice will show: Stripe Tax decides (TAX_MODE=stripe), or
    our rate for the buyer as a Stripe TaxRate on the line (rates; a subscription keeps it on its
    item, so renewals are taxed alike). The metadata records the choice for the invoice."""
    if choice.mode == "stripe":
        params["automatic_tax"] = {"enabled": True}
        params["customer_update"] = {"address": "auto", "name": "auto"}
    elif choice.mode == "rates":
        meta[objects.META_TAX] = tax_rates.reference(choice)
        if choice.stripe_rates:
            params["line_items"][0]["tax_rates"] = list(choice.stripe_rates)


async def _audit(
    s: AsyncSession,
    actor: Actor,
    project_id: uuid.UUID,
    result: CheckoutSession,
    params: dict[str, Any],
    target: dict[str, Any],
) -> None:
    await audit.record(
        s,
        actor,
        "payments.checkout.create",
        project_id=project_id,
        target_type="checkout_session",
        target_id=result.id,
        after={"mode": params["mode"], **target},
    )


async def _with_coupon(
    svc: PaymentsService,
    actor: Actor,
    project_id: uuid.UUID,
    code: str,
    used_on: redemptions.Target,
    params: dict[str, Any],
    target: dict[str, Any],
    wallet_id: uuid.UUID | None,
) -> CheckoutSession:
    """The session is created inside the transaction that reserves the coupon's slot: if Stripe
    fails, the reservation rolls back; if the commit fails, the session is expired at Stripe."""
    result: CheckoutSession | None = None
    try:
        async with svc.db.transaction(project_id=project_id) as s:
            held = await redemptions.reserve_for_checkout(svc, s, actor, project_id, code, used_on, params, wallet_id)
            session = await svc.require_stripe().create_checkout_session(params)
            result = CheckoutSession(str(session["id"]), str(session.get("url") or ""))
            await redemptions.attach_session(s, held, result.id)
            await _audit(s, actor, project_id, result, params, {**target, "couponCode": held.coupon.code})
    except BaseException:
        if result is not None:
            try:
                await svc.require_stripe().expire_checkout_session(result.id)
            except AppError:
                log.error("could not expire unsaved checkout session %s; expire it in the dashboard", result.id)
        raise
    return result
