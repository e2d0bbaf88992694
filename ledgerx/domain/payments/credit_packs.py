"""Credit packs (platform admins): a number of credits sold once at a price (a Stripe Price)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from ledgerx import ids
from ledgerx.db.models import CreditPack
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.payments import records
from ledgerx.domain.payments.catalog import archive_item, clean_name, positive
from ledgerx.domain.payments.money import Money
from ledgerx.domain.payments.prices import StripeChanges, record_price, retire_price, save_new, stripe_price
from ledgerx.domain.payments.records import CreditPackRecord
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

MAX_VALIDITY_DAYS = 3650
# `update_credit_pack(validity=KEEP)`: leave the validity as it is (None clears it).
KEEP: Any = object()


def validity_days(days: int | None) -> int | None:
    """None: the pack's credits never expire; else 1 to 3650 days after each purchase."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VALIDITY_DAYS:
        raise BadInput(
            f"validityDays must be between 1 and {MAX_VALIDITY_DAYS} (null: no expiry)", field="validityDays"
        )
    return days


def pack_snapshot(p: CreditPack) -> dict[str, Any]:
    return {
        "name": p.name,
        "credits": str(p.credits),
        "price": str(p.price_amount),
        "currency": p.currency,
        "validityDays": p.validity_days,
        "stripePriceId": p.stripe_price_id,
        "archived": p.archived_at is not None,
    }


async def create_credit_pack(
    svc: PaymentsService, actor: Actor, *, name: str, credits: int, price: Money, validity: int | None = None
) -> CreditPackRecord:
    clean = clean_name(name)
    positive(credits, "credits")
    if price.amount <= 0:
        raise BadInput("a credit pack needs a price above zero", field="price.amount")
    validity = validity_days(validity)
    pack_id = uuid7()
    stripe_ids = await stripe_price(
        svc,
        kind="credit_pack",
        item_id=pack_id,
        name=clean,
        product_id=None,
        price=price,
        interval=None,
        nonce=f"{price.amount}:{price.currency}",
    )
    pack = CreditPack(
        id=pack_id,
        name=clean,
        credits=credits,
        price_amount=price.amount,
        currency=price.currency,
        validity_days=validity,
        stripe_product_id=stripe_ids[0] if stripe_ids else None,
        stripe_price_id=stripe_ids[1] if stripe_ids else None,
    )
    saved = await save_new(
        svc, actor, pack, kind="credit_pack", stripe_ids=stripe_ids, price=price, interval=None, snapshot=pack_snapshot
    )
    return records.of(CreditPackRecord, saved)


async def update_credit_pack(
    svc: PaymentsService,
    actor: Actor,
    pack_id: uuid.UUID,
    *,
    name: str | None = None,
    credits: int | None = None,
    price: Money | None = None,
    validity: int | None = KEEP,
) -> CreditPackRecord:
    """Edit a pack. A new validity applies to Checkouts opened and top-ups paid from then on."""
    if validity is not KEEP:
        validity_days(validity)  # refused before Stripe is asked
    changes = StripeChanges()
    try:
        pack = await _update_credit_pack(
            svc, actor, pack_id, name=name, credits=credits, price=price, validity=validity, changes=changes
        )
    except BaseException:
        await changes.undo(svc)
        raise
    await changes.finish(svc)
    return records.of(CreditPackRecord, pack)


async def _update_credit_pack(
    svc: PaymentsService,
    actor: Actor,
    pack_id: uuid.UUID,
    *,
    name: str | None,
    credits: int | None,
    price: Money | None,
    validity: int | None,
    changes: StripeChanges,
) -> CreditPack:
    async with svc.db.transaction(system=True) as s:
        pack = (await s.execute(select(CreditPack).where(CreditPack.id == pack_id).with_for_update())).scalar()
        if pack is None:
            raise NotFound("credit pack not found", field="id")
        before = pack_snapshot(pack)
        if name is not None:
            pack.name = clean_name(name)
            if svc.stripe is not None and pack.stripe_product_id and pack.name != before["name"]:
                await svc.stripe.update_product(pack.stripe_product_id, {"name": pack.name})
        if credits is not None:
            pack.credits = positive(credits, "credits")
        if validity is not KEEP:
            pack.validity_days = validity_days(validity)
        if price is not None and (price.amount, price.currency) != (pack.price_amount, pack.currency):
            if price.amount <= 0:
                raise BadInput("a credit pack needs a price above zero", field="price.amount")
            created = await stripe_price(
                svc,
                kind="credit_pack",
                item_id=pack.id,
                name=pack.name,
                product_id=pack.stripe_product_id,
                price=price,
                interval=None,
                nonce=uuid7().hex,
            )
            if created:
                changes.made.append((None if pack.stripe_product_id else created[0], created[1]))
            await retire_price(s, pack.stripe_price_id, changes)
            pack.price_amount, pack.currency = price.amount, price.currency
            pack.stripe_product_id, pack.stripe_price_id = created if created else (pack.stripe_product_id, None)
            if created:
                await record_price(s, created[1], plan_id=None, pack_id=pack.id, price=price, interval=None)
        pack.updated_at = svc.now()
        await audit.record(
            s,
            actor,
            "catalog.credit_pack.update",
            target_type="credit_pack",
            target_id=ids.encode("credit_pack", pack.id),
            before=before,
            after=pack_snapshot(pack),
        )
    return pack


async def archive_credit_pack(svc: PaymentsService, actor: Actor, pack_id: uuid.UUID) -> CreditPackRecord:
    return records.of(
        CreditPackRecord, await archive_item(svc, actor, CreditPack, pack_id, "credit_pack", pack_snapshot)
    )
