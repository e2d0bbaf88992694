"""The few Stripe API calls LedgerX makes, through the official SDK (async, httpx transport).

The base URL comes from `STRIPE_API_BASE` so tests (and staging) can point the real SDK at a local
fake. Every create call that must not happen twice carries a Stripe idempotency key derived from
LedgerX ids. Results are plain dicts (the JSON Stripe returned).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import stripe

from ledgerx.domain.errors import AppError, Conflict, PaymentProviderError, PaymentsNotConfigured

log = logging.getLogger("ledgerx.payments.stripe")

# The names other modules (and older code) use for the two payments error codes.
StripeNotConfigured = PaymentsNotConfigured
__all__ = ["PaymentProviderError", "StripeGateway", "StripeNotConfigured", "translate"]


def _plain(value: Any) -> dict[str, Any]:
    if hasattr(value, "to_dict"):
        out: dict[str, Any] = value.to_dict()
        return out
    return dict(value)


def _any(params: Mapping[str, Any]) -> Any:
    """Our params as the SDK's TypedDicts (built from LedgerX data, checked by the SDK's server)."""
    return dict(params)


def _provider(exc: stripe.StripeError) -> dict[str, Any]:
    """What a client (and support) needs to find the call at Stripe: its message, code, status and
    request id. Stripe writes its messages for developers; they name no secrets (keys are masked)."""
    status = exc.http_status
    return {
        "providerMessage": (exc.user_message or "")[:500] or None,
        "providerCode": exc.code,
        "providerStatus": status,
        "providerRequestId": exc.request_id,
        # Worth trying again later: Stripe unreachable, overloaded, rate limiting or a conflict.
        "retryable": isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError)
        or (status is not None and (status >= 500 or status == 409)),
    }


def translate(exc: Exception, what: str) -> AppError:
    """The one place where the stripe SDK's error classes become LedgerX errors (stable codes):
    a declined card is CONFLICT with `reason: PAYMENT_FAILED` (the customer's to fix); a key Stripe
    refuses is PAYMENTS_NOT_CONFIGURED (the operator's); everything else Stripe answers or fails
    is PAYMENT_PROVIDER_ERROR with the provider's message and request id."""
    if not isinstance(exc, stripe.StripeError):
        log.warning("stripe %s failed: %r", what, exc)
        return PaymentProviderError(f"the payment provider failed to {what}", retryable=True)
    ext = _provider(exc)
    if isinstance(exc, stripe.CardError):
        return Conflict(
            f"the payment was declined: {exc.user_message or 'card declined'}",
            reason="PAYMENT_FAILED",
            providerRequestId=exc.request_id,
        )
    log.warning("stripe %s failed: %r (request %s)", what, exc, exc.request_id)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return PaymentsNotConfigured(
            "payments are not configured on this server: the payment provider refused its STRIPE_API_KEY",
            providerRequestId=exc.request_id,
        )
    if isinstance(exc, stripe.APIConnectionError):
        return PaymentProviderError(f"the payment provider could not be reached to {what}", **ext)
    detail = ext["providerMessage"] or f"HTTP {ext['providerStatus'] or 'error'}"
    return PaymentProviderError(f"the payment provider failed to {what}: {detail}", **ext)


class StripeGateway:
    def __init__(
        self, api_key: str, api_base: str | None = None, *, timeout: float = 20.0, max_retries: int = 2
    ) -> None:
        base: Any = {"api": api_base.rstrip("/")} if api_base else None
        self.client = stripe.StripeClient(
            api_key,
            base_addresses=base,
            http_client=stripe.HTTPXClient(timeout=timeout),
            max_network_retries=max_retries,
        )

    async def _call(self, what: str, coro: Any) -> dict[str, Any]:
        try:
            return _plain(await coro)
        except stripe.StripeError as exc:
            raise translate(exc, what) from exc

    @staticmethod
    def _opts(idempotency_key: str | None) -> Any:
        return {"idempotency_key": idempotency_key} if idempotency_key else None

    # -- catalog -------------------------------------------------------------------------------

    async def create_product(self, name: str, meta: Mapping[str, str], idempotency_key: str) -> dict[str, Any]:
        v1 = self.client.v1
        return await self._call(
            "create a product",
            v1.products.create_async({"name": name, "metadata": dict(meta)}, self._opts(idempotency_key)),
        )

    async def delete_product(self, product_id: str) -> None:
        """Stripe deletes only a product without prices (else: archive it with `update_product`)."""
        await self._call("delete a product", self.client.v1.products.delete_async(product_id))

    async def update_product(self, product_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call("update a product", self.client.v1.products.update_async(product_id, _any(params)))

    async def create_price(
        self,
        product_id: str,
        amount: int,
        currency: str,
        interval: str | None,
        meta: Mapping[str, str],
        idempotency_key: str,
    ) -> dict[str, Any]:
        params: Any = {
            "product": product_id,
            "unit_amount": amount,
            "currency": currency.lower(),
            "metadata": dict(meta),
        }
        if interval:
            params["recurring"] = {"interval": interval.lower()}
        return await self._call(
            "create a price", self.client.v1.prices.create_async(params, self._opts(idempotency_key))
        )

    async def deactivate_price(self, price_id: str) -> None:
        await self._call("archive a price", self.client.v1.prices.update_async(price_id, {"active": False}))

    # -- tax rates and refunds -------------------------------------------------------------------

    async def create_tax_rate(self, params: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        """A Stripe TaxRate mirroring one of ours (TAX_MODE=rates): Checkout and subscriptions apply it."""
        return await self._call(
            "create a tax rate", self.client.v1.tax_rates.create_async(_any(params), self._opts(idempotency_key))
        )

    async def archive_tax_rate(self, tax_rate_id: str) -> None:
        await self._call("archive a tax rate", self.client.v1.tax_rates.update_async(tax_rate_id, {"active": False}))

    async def create_refund(self, params: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        return await self._call(
            "refund a payment", self.client.v1.refunds.create_async(_any(params), self._opts(idempotency_key))
        )

    # -- coupons and promotion codes -------------------------------------------------------------

    async def create_coupon(self, params: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        return await self._call(
            "create a coupon", self.client.v1.coupons.create_async(_any(params), self._opts(idempotency_key))
        )

    async def delete_coupon(self, coupon_id: str) -> None:
        """Deleting a coupon stops new redemptions; discounts already applied keep running."""
        await self._call("delete a coupon", self.client.v1.coupons.delete_async(coupon_id))

    async def create_promotion_code(self, params: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        return await self._call(
            "create a promotion code",
            self.client.v1.promotion_codes.create_async(_any(params), self._opts(idempotency_key)),
        )

    async def deactivate_promotion_code(self, promotion_code_id: str) -> dict[str, Any]:
        return await self._call(
            "deactivate a promotion code",
            self.client.v1.promotion_codes.update_async(promotion_code_id, {"active": False}),
        )

    async def expire_checkout_session(self, session_id: str) -> dict[str, Any]:
        return await self._call("expire a checkout session", self.client.v1.checkout.sessions.expire_async(session_id))

    # -- customers and checkout ------------------------------------------------------------------

    async def create_customer(self, name: str, meta: Mapping[str, str], idempotency_key: str) -> dict[str, Any]:
        return await self._call(
            "create a customer",
            self.client.v1.customers.create_async({"name": name, "metadata": dict(meta)}, self._opts(idempotency_key)),
        )

    async def create_checkout_session(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call(
            "create a checkout session", self.client.v1.checkout.sessions.create_async(_any(params))
        )

    async def create_billing_portal_session(self, customer_id: str, return_url: str) -> dict[str, Any]:
        """A session of Stripe's customer portal (payment methods, invoices, cancellation)."""
        return await self._call(
            "create a billing portal session",
            self.client.v1.billing_portal.sessions.create_async({"customer": customer_id, "return_url": return_url}),
        )

    async def create_off_session_payment(self, params: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        """A PaymentIntent confirmed at once without the customer (auto top-up). A decline is not an
        error here: Stripe answers 402 with the failed intent, which is returned (status
        `requires_payment_method`, `last_payment_error`) so the caller records the failure."""
        try:
            created = await self.client.v1.payment_intents.create_async(_any(params), self._opts(idempotency_key))
        except stripe.CardError as exc:
            intent = getattr(exc.error, "payment_intent", None) if exc.error is not None else None
            if intent is None:
                raise translate(exc, "create a payment") from exc
            out = _plain(intent)
            if not out.get("last_payment_error"):
                out["last_payment_error"] = {"message": exc.user_message, "code": exc.code}
            return out
        except stripe.StripeError as exc:
            raise translate(exc, "create a payment") from exc
        return _plain(created)

    # -- subscriptions and invoices ---------------------------------------------------------------

    async def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return await self._call(
            "read a payment intent", self.client.v1.payment_intents.retrieve_async(payment_intent_id)
        )

    async def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        return await self._call("read a checkout session", self.client.v1.checkout.sessions.retrieve_async(session_id))

    async def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        return await self._call("read a subscription", self.client.v1.subscriptions.retrieve_async(subscription_id))

    async def update_subscription(
        self, subscription_id: str, params: Mapping[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        return await self._call(
            "update a subscription",
            self.client.v1.subscriptions.update_async(subscription_id, _any(params), self._opts(idempotency_key)),
        )

    async def cancel_subscription(self, subscription_id: str) -> dict[str, Any]:
        return await self._call("cancel a subscription", self.client.v1.subscriptions.cancel_async(subscription_id))

    async def schedule_price_change(
        self,
        subscription_id: str,
        current_price: str,
        new_price: str,
        new_interval: str,
        at: int,
        meta: Mapping[str, str],
        idempotency_key: str,
    ) -> dict[str, Any]:
        """Switch the subscription to `new_price` at `at` (its period end) with a subscription
        schedule: the current phase ends there, the next bills the new price, then the schedule
        releases the subscription. Works across intervals, where a plain price update would reset
        the billing cycle at once."""
        v1 = self.client.v1
        schedule = await self._call(
            "create a subscription schedule",
            v1.subscription_schedules.create_async(
                {"from_subscription": subscription_id}, self._opts(idempotency_key + ":schedule")
            ),
        )
        start = schedule["phases"][0]["start_date"]
        params: Any = {
            "end_behavior": "release",
            "metadata": dict(meta),
            "phases": [
                {"items": [{"price": current_price, "quantity": 1}], "start_date": start, "end_date": at},
                {
                    "items": [{"price": new_price, "quantity": 1}],
                    "duration": {"interval": new_interval.lower(), "interval_count": 1},
                    "proration_behavior": "none",
                },
            ],
        }
        return await self._call(
            "schedule a plan change",
            v1.subscription_schedules.update_async(
                str(schedule["id"]), params, self._opts(idempotency_key + ":phases")
            ),
        )

    async def release_schedule(self, schedule_id: str) -> None:
        """Drop a planned change (the subscription stays as it is). Already released: nothing to do."""
        try:
            await self.client.v1.subscription_schedules.release_async(schedule_id)
        except stripe.InvalidRequestError as exc:
            log.info("subscription schedule %s not released: %s", schedule_id, exc)
        except stripe.StripeError as exc:
            raise translate(exc, "release a subscription schedule") from exc

    async def charge_now(
        self,
        customer_id: str,
        subscription_id: str,
        amount: int,
        currency: str,
        description: str,
        meta: Mapping[str, str],
        idempotency_key: str,
        *,
        tax_rates: tuple[str, ...] = (),
        automatic_tax: bool = False,
    ) -> dict[str, Any]:
        """A one-off invoice for `amount`, finalized and paid at once (a proration charge), taxed
        with `tax_rates` (TAX_MODE=rates) or by Stripe Tax (`automatic_tax`, TAX_MODE=stripe)."""
        v1 = self.client.v1
        item: dict[str, Any] = {
            "customer": customer_id,
            "amount": amount,
            "currency": currency.lower(),
            "description": description,
            "subscription": subscription_id,
            "metadata": dict(meta),
        }
        if tax_rates:
            item["tax_rates"] = list(tax_rates)
        await self._call(
            "add an invoice item", v1.invoice_items.create_async(_any(item), self._opts(idempotency_key + ":item"))
        )
        params: dict[str, Any] = {
            "customer": customer_id,
            "subscription": subscription_id,
            "collection_method": "charge_automatically",
            "pending_invoice_items_behavior": "include",
            "auto_advance": True,
            "description": description,
            "metadata": dict(meta),
        }
        if automatic_tax:
            params["automatic_tax"] = {"enabled": True}
        invoice = await self._call(
            "create an invoice", v1.invoices.create_async(_any(params), self._opts(idempotency_key + ":invoice"))
        )
        invoice_id = str(invoice["id"])
        await self._call("finalize an invoice", v1.invoices.finalize_invoice_async(invoice_id))
        try:
            return await self._call("pay an invoice", v1.invoices.pay_async(invoice_id))
        except Conflict:
            # Declined: void the invoice so it is not retried behind the customer's back.
            try:
                await v1.invoices.void_invoice_async(invoice_id)
            except stripe.StripeError:
                log.warning("could not void declined invoice %s", invoice_id, exc_info=True)
            raise

    # -- reconciliation -----------------------------------------------------------------------------

    async def list_events(self, created_gte: int) -> AsyncIterator[dict[str, Any]]:
        try:
            page = await self.client.v1.events.list_async({"created": {"gte": created_gte}, "limit": 100})
            async for item in page.auto_paging_iter():
                yield _plain(item)
        except stripe.StripeError as exc:
            raise translate(exc, "list events") from exc

    async def list_checkout_sessions(self, created_gte: int) -> AsyncIterator[dict[str, Any]]:
        try:
            page = await self.client.v1.checkout.sessions.list_async(
                {"created": {"gte": created_gte}, "status": "complete", "limit": 100}
            )
            async for item in page.auto_paging_iter():
                yield _plain(item)
        except stripe.StripeError as exc:
            raise translate(exc, "list checkout sessions") from exc
