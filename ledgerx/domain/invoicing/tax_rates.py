"""The platform's tax rates (TAX_MODE=rates) and the tax a buyer's invoice gets.

Platform admins define one live rate per country, or per country and state (`createTaxRate`);
the rate of the buyer's state beats their country's. Each rate is mirrored to Stripe as a TaxRate
when Stripe is configured, so Checkout, subscriptions and proration invoices charge the buyer the
same tax LedgerX prints (Stripe computes the charge; LedgerX's invoice computes the same figure
with its documented rounding, tax.py). A rate is never edited (issued invoices name it): archive
it and create another.

Who pays which tax (`choose`):
- TAX_MODE=none: no tax.
- TAX_MODE=stripe: Stripe Tax decides at Checkout; LedgerX copies what Stripe computed.
- TAX_MODE=rates: EU reverse charge when seller and buyer are in different EU countries and the
  buyer gave a valid-looking VAT id of their country (no tax, the reverse-charge wording);
  otherwise the rate of the buyer's country/state. A buyer without a billing country is taxed at
  the rate of SELLER_COUNTRY (where an unlocated sale is taxed), and without such a rate gets no
  tax; the invoice then says why.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import BillingDetails, TaxRate
from ledgerx.domain import audit, records
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError, BadInput, NotFound
from ledgerx.domain.invoicing import tax
from ledgerx.domain.notifications import billing_details
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

MAX_STATE = 100
UNLOCATED_NOTE = "No tax: the buyer has no billing country and no rate applies to the seller's country."


@dataclasses.dataclass(frozen=True, slots=True)
class TaxRateRecord:
    id: uuid.UUID
    name: str
    percentage: decimal.Decimal
    inclusive: bool
    country: str
    state: str | None
    stripe_tax_rate_id: str | None
    archived_at: dt.datetime | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class TaxChoice:
    """The tax an invoice of the project gets now."""

    mode: str  # none | rates | stripe
    rate: tax.Rate | None = None
    stripe_tax_rate_id: str | None = None
    reverse_charge: bool = False
    note: str | None = None

    @property
    def stripe_rates(self) -> tuple[str, ...]:
        return (self.stripe_tax_rate_id,) if self.stripe_tax_rate_id else ()


def _record(row: TaxRate) -> TaxRateRecord:
    return records.of(TaxRateRecord, row)


def engine_rate(row: TaxRate | TaxRateRecord) -> tax.Rate:
    return tax.Rate(row.name, row.percentage, row.inclusive, row.country, row.state, row.id)


def _percentage(value: decimal.Decimal | float | str) -> decimal.Decimal:
    """The decimal text of the input, checked by the engine's own rule (tax.percentage)."""
    try:
        p = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        raise BadInput("percentage must be a number from 0 to 100", field="percentage") from None
    tax.percentage(p, "percentage")
    return p


async def _mirror(svc: PaymentsService, rate: tax.Rate) -> str:
    """The Stripe TaxRate of one of ours (its id): created once per rate, whatever retries."""
    assert rate.id is not None
    params: dict[str, object] = {
        "display_name": rate.name,
        "percentage": str(rate.percentage),
        "inclusive": rate.inclusive,
        "country": rate.country,
        "metadata": {"ledgerx_tax_rate": ids.encode("tax_rate", rate.id)},
    }
    if rate.state:
        params["state"] = rate.state
    made = await svc.require_stripe().create_tax_rate(params, f"ledgerx:tax-rate:{rate.id}")
    return str(made["id"])


async def create_tax_rate(
    svc: PaymentsService,
    actor: Actor,
    *,
    name: str,
    percentage: decimal.Decimal | float | str,
    inclusive: bool,
    country: str,
    state: str | None = None,
) -> TaxRateRecord:
    title = (name or "").strip()
    if not 1 <= len(title) <= 100 or any(ord(c) < 32 for c in title):
        raise BadInput("name is 1 to 100 characters on one line", field="name")
    p = _percentage(percentage)
    code = billing_details.country(country or "", "country")
    region = (state or "").strip().upper() or None
    if region is not None and (len(region) > MAX_STATE or any(ord(c) < 32 for c in region)):
        raise BadInput(f"state is at most {MAX_STATE} characters on one line", field="state")
    async with svc.db.read() as s:
        taken = await s.scalar(
            select(TaxRate.id).where(
                TaxRate.country == code,
                TaxRate.state.is_(None) if region is None else TaxRate.state == region,
                TaxRate.archived_at.is_(None),
            )
        )
    if taken is not None:
        place = f"{code}/{region}" if region else code
        raise BadInput(f"{place} has a live tax rate; archive it first", field="country")
    rate_id = uuid7()
    stripe_id: str | None = None
    if svc.stripe is not None:
        stripe_id = await _mirror(svc, tax.Rate(title, p, bool(inclusive), code, region, rate_id))
    async with svc.db.transaction(system=True) as s:
        row = TaxRate(
            id=rate_id,
            name=title,
            percentage=p,
            inclusive=bool(inclusive),
            country=code,
            state=region,
            stripe_tax_rate_id=stripe_id,
            created_by=actor.id if actor.type == "user" else None,
        )
        s.add(row)
        await s.flush()
        await s.refresh(row)
        await audit.record(
            s,
            actor,
            "tax_rate.create",
            target_type="tax_rate",
            target_id=ids.encode("tax_rate", rate_id),
            after={"name": title, "percentage": str(p), "inclusive": inclusive, "country": code, "state": region},
        )
        return _record(row)


async def archive_tax_rate(svc: PaymentsService, actor: Actor, rate_id: uuid.UUID) -> TaxRateRecord:
    async with svc.db.transaction(system=True) as s:
        row = await s.get(TaxRate, rate_id, with_for_update=True)
        if row is None:
            raise NotFound("tax rate not found", field="id")
        if row.archived_at is None:
            row.archived_at = svc.now()
            await audit.record(
                s, actor, "tax_rate.archive", target_type="tax_rate", target_id=ids.encode("tax_rate", rate_id)
            )
        record = _record(row)
    if record.stripe_tax_rate_id and svc.stripe is not None:
        await svc.stripe.archive_tax_rate(record.stripe_tax_rate_id)
    return record


async def list_tax_rates(svc: PaymentsService, *, include_archived: bool = False) -> list[TaxRateRecord]:
    async with svc.db.read() as s:
        q = select(TaxRate).order_by(TaxRate.country, TaxRate.state.nulls_first(), TaxRate.id)
        if not include_archived:
            q = q.where(TaxRate.archived_at.is_(None))
        return [_record(r) for r in (await s.execute(q)).scalars()]


async def rate_by_stripe_id(s: AsyncSession, stripe_ids: list[str]) -> TaxRate | None:
    if not stripe_ids:
        return None
    return (await s.execute(select(TaxRate).where(TaxRate.stripe_tax_rate_id.in_(stripe_ids)).limit(1))).scalar()


async def choose(svc: PaymentsService, s: AsyncSession, project_id: uuid.UUID) -> TaxChoice:
    """The tax the project's next invoice gets (see the module doc), read in `s`'s transaction."""
    settings = svc.settings
    mode = settings.tax_mode
    if mode != "rates":
        return TaxChoice(mode)
    details = await s.get(BillingDetails, project_id)
    country = details.address_country if details is not None else None
    state = details.address_state if details is not None else None
    tax_ids = [(str(t.get("type")), str(t.get("value"))) for t in (details.tax_ids if details else [])]
    if tax.reverse_charge_applies(settings.seller_country, country, tax_ids):
        return TaxChoice(mode, reverse_charge=True, note=tax.REVERSE_CHARGE_NOTE)
    rows = (await s.execute(select(TaxRate).where(TaxRate.archived_at.is_(None)))).scalars().all()
    rates = [engine_rate(r) for r in rows]
    located = country is not None
    chosen = tax.choose_rate(rates, country if located else settings.seller_country, state if located else None)
    if chosen is None:
        return TaxChoice(mode, note=None if located else UNLOCATED_NOTE)
    row = next(r for r in rows if r.id == chosen.id)
    return TaxChoice(mode, rate=chosen, stripe_tax_rate_id=row.stripe_tax_rate_id)


async def choice_for_rate(svc: PaymentsService, s: AsyncSession, rate_id: uuid.UUID | None) -> TaxChoice | None:
    """The choice made earlier (a Checkout's metadata names its rate), if the rate still exists."""
    if rate_id is None:
        return None
    row = await s.get(TaxRate, rate_id)
    if row is None:
        return None
    return TaxChoice(svc.settings.tax_mode, rate=engine_rate(row), stripe_tax_rate_id=row.stripe_tax_rate_id)


REVERSE_CHARGE = "reverse_charge"
NO_TAX = "none"
UNLOCATED = "unlocated"  # no tax because the buyer had no billing country (and no seller-country rate)


def reference(choice: TaxChoice) -> str:
    """What a Checkout's metadata records of the choice (`ledgerx_tax`), so the invoice issued
    when it is paid uses the tax the buyer was charged, whatever the billing details are by then."""
    if choice.reverse_charge:
        return REVERSE_CHARGE
    if choice.rate is not None and choice.rate.id is not None:
        return ids.encode("tax_rate", choice.rate.id)
    return UNLOCATED if choice.note == UNLOCATED_NOTE else NO_TAX


async def choice_of(svc: PaymentsService, s: AsyncSession, project_id: uuid.UUID, ref: str | None) -> TaxChoice:
    """The choice a Checkout recorded (`reference`), else the project's choice now."""
    mode = svc.settings.tax_mode
    if mode == "rates" and ref:
        if ref == REVERSE_CHARGE:
            return TaxChoice(mode, reverse_charge=True, note=tax.REVERSE_CHARGE_NOTE)
        if ref == NO_TAX:
            return TaxChoice(mode)
        if ref == UNLOCATED:
            return TaxChoice(mode, note=UNLOCATED_NOTE)
        try:
            rate_id = ids.decode("tax_rate", ref)
        except AppError:  # a foreign or garbled value: decide as if it were absent
            rate_id = None
        found = await choice_for_rate(svc, s, rate_id)
        if found is not None:
            return found
    return await choose(svc, s, project_id)


async def ensure_stripe_rate(svc: PaymentsService, choice: TaxChoice) -> TaxChoice:
    """The choice with its Stripe TaxRate, created now if the rate was defined while Stripe was not
    configured (Checkout can only charge a tax it has a TaxRate for)."""
    if choice.rate is None or choice.stripe_tax_rate_id is not None or choice.rate.id is None:
        return choice
    stripe_id = await _mirror(svc, choice.rate)
    async with svc.db.transaction(system=True) as s:
        row = await s.get(TaxRate, choice.rate.id, with_for_update=True)
        if row is not None and row.stripe_tax_rate_id is None:
            row.stripe_tax_rate_id = stripe_id
    return dataclasses.replace(choice, stripe_tax_rate_id=stripe_id)
