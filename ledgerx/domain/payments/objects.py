"""Reading Stripe objects (events, sessions, subscriptions, invoices, charges) as plain JSON.

Webhook payloads are the JSON Stripe sent, stored as received; these helpers read the few fields
LedgerX needs, across the API versions that moved them (e.g. `current_period_*` onto subscription
items, `invoice.subscription` into `invoice.parent.subscription_details`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from ledgerx import ids
from ledgerx.domain.errors import AppError

Obj = Mapping[str, Any]

# Metadata keys LedgerX puts on the Stripe objects it creates.
META_PROJECT = "ledgerx_project_id"
META_PACK = "ledgerx_credit_pack_id"
META_PLAN = "ledgerx_plan_id"
META_WALLET = "ledgerx_wallet_id"
META_CREDITS = "ledgerx_credits"
# A credit pack's validityDays when its Checkout opened ("0": no expiry).
META_VALIDITY = "ledgerx_validity_days"
META_INVOICE = "ledgerx_invoice_id"
META_KIND = "ledgerx_kind"
# The tax the buyer was charged at Checkout: a tax rate id (txr_…), "reverse_charge" or "none".
META_TAX = "ledgerx_tax"
META_COUPON = "ledgerx_coupon_id"
# The coupon redemption a Checkout session reserved (released if the session expires).
META_REDEMPTION = "ledgerx_coupon_redemption_id"


def ts(value: Any) -> dt.datetime | None:
    """A Stripe unix timestamp (seconds) as an aware UTC datetime."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return dt.datetime.fromtimestamp(int(value), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def unix(value: dt.datetime) -> int:
    return int(value.timestamp())


def obj(value: Any) -> Obj:
    return value if isinstance(value, Mapping) else {}


def ref(value: Any) -> str | None:
    """An id field that may be a string or an expanded object."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        v = value.get("id")
        return v if isinstance(v, str) and v else None
    return None


def integer(value: Any, default: int = 0) -> int:
    if isinstance(value, bool) or value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def currency(value: Any) -> str:
    return str(value or "").upper()


def metadata(o: Obj) -> dict[str, str]:
    m = o.get("metadata")
    return {str(k): str(v) for k, v in m.items()} if isinstance(m, Mapping) else {}


def decode_meta(meta: Mapping[str, str], key: str, kind: str) -> uuid.UUID | None:
    """A LedgerX id from metadata (public form), or None when absent or malformed."""
    raw = meta.get(key)
    if not raw:
        return None
    try:
        return ids.decode(kind, raw)
    except AppError:
        return None


def validity_days(meta: Mapping[str, str], current: int | None) -> int | None:
    """The pack's validityDays when the Checkout opened (the customer bought those terms);
    `current`, the pack's validity now, for a session opened before LedgerX wrote it."""
    raw = meta.get(META_VALIDITY)
    if raw is None:
        return current
    days = integer(raw)
    return days if 1 <= days <= 3650 else None


def data_object(event: Obj) -> Obj:
    return obj(obj(event.get("data")).get("object"))


# -- subscriptions ---------------------------------------------------------------------------------


def subscription_items(sub: Obj) -> list[Obj]:
    items = obj(sub.get("items")).get("data")
    return [obj(i) for i in items] if isinstance(items, list) else []


def subscription_price(sub: Obj) -> str | None:
    for item in subscription_items(sub):
        p = ref(item.get("price")) or ref(item.get("plan"))
        if p:
            return p
    return None


def subscription_item_id(sub: Obj) -> str | None:
    for item in subscription_items(sub):
        i = ref(item.get("id"))
        if i:
            return i
    return None


def subscription_period(sub: Obj) -> tuple[dt.datetime | None, dt.datetime | None]:
    start, end = ts(sub.get("current_period_start")), ts(sub.get("current_period_end"))
    if start is None or end is None:
        for item in subscription_items(sub):
            start = start or ts(item.get("current_period_start"))
            end = end or ts(item.get("current_period_end"))
    return start, end


# -- invoices --------------------------------------------------------------------------------------


def invoice_lines(inv: Obj) -> list[Obj]:
    lines = obj(inv.get("lines")).get("data")
    return [obj(line) for line in lines] if isinstance(lines, list) else []


def invoice_subscription(inv: Obj) -> str | None:
    found = ref(inv.get("subscription"))
    if found:
        return found
    parent = obj(inv.get("parent"))
    found = ref(obj(parent.get("subscription_details")).get("subscription"))
    if found:
        return found
    for line in invoice_lines(inv):
        found = ref(line.get("subscription")) or ref(
            obj(obj(line.get("parent")).get("subscription_item_details")).get("subscription")
        )
        if found:
            return found
    return None


def invoice_subscription_metadata(inv: Obj) -> dict[str, str]:
    for source in (obj(inv.get("subscription_details")), obj(obj(inv.get("parent")).get("subscription_details"))):
        m = metadata(source)
        if m:
            return m
    return {}


def line_price(line: Obj) -> str | None:
    found = ref(line.get("price")) or ref(line.get("plan"))
    if found:
        return found
    return ref(obj(obj(line.get("pricing")).get("price_details")).get("price"))


def line_period(line: Obj) -> tuple[dt.datetime | None, dt.datetime | None]:
    period = obj(line.get("period"))
    return ts(period.get("start")), ts(period.get("end"))


def invoice_period(inv: Obj) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The service period the invoice pays for: its subscription line's period when it has one."""
    for line in invoice_lines(inv):
        if line.get("proration"):
            continue
        start, end = line_period(line)
        if start and end:
            return start, end
    return ts(inv.get("period_start")), ts(inv.get("period_end"))


def invoice_charge(inv: Obj) -> str | None:
    return ref(inv.get("charge"))


def invoice_payment_intent(inv: Obj) -> str | None:
    found = ref(inv.get("payment_intent"))
    if found:
        return found
    payments = obj(inv.get("payments")).get("data")
    if isinstance(payments, list):
        for p in payments:
            found = ref(obj(obj(p).get("payment")).get("payment_intent"))
            if found:
                return found
    return None


def invoice_tax(inv: Obj) -> tuple[int, bool]:
    """The tax Stripe computed on an invoice and whether it is included in the prices, whatever the
    API version: `total_taxes` (2025+), `total_tax_amounts`, or the older `tax` figure."""
    taxes = inv.get("total_taxes")
    if isinstance(taxes, list) and taxes:
        items = [obj(t) for t in taxes]
        return sum(integer(t.get("amount")) for t in items), items[0].get("tax_behavior") == "inclusive"
    amounts = inv.get("total_tax_amounts")
    if isinstance(amounts, list) and amounts:
        items = [obj(t) for t in amounts]
        return sum(integer(t.get("amount")) for t in items), bool(items[0].get("inclusive"))
    return max(integer(inv.get("tax")), 0), False


def line_tax_rates(line: Obj) -> list[str]:
    """The Stripe TaxRate ids applied to an invoice line (`tax_rates`, or `taxes[].tax_rate_details`)."""
    found = [r for r in (ref(x) for x in (line.get("tax_rates") or [])) if r]
    for t in line.get("taxes") or []:
        rate = ref(obj(obj(t).get("tax_rate_details")).get("tax_rate"))
        if rate:
            found.append(rate)
    return found


def invoice_discount(inv: Obj) -> int:
    return sum(integer(obj(d).get("amount")) for d in (inv.get("total_discount_amounts") or []))
