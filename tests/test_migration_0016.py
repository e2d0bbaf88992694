"""Migration 0016 (invoicing) on a database that already holds payments and invoices: every
credit-pack payment gets its PAID CREDIT_PACK invoice (an ITEM line at the price before the coupon,
a DISCOUNT line for the coupon), linked from the payment; a top-up (a CREDIT_PACK payment that has
its TOP_UP invoice already) gets none; PAID invoices are numbered in the order they were paid, per
year, with the billing details the project has; unpaid ones stay unnumbered; the counters let the
next issue continue without a gap; the new CHECKs hold; the books are untouched; and the downgrade
removes what the upgrade made, after which the upgrade numbers the same invoices the same way."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import downgrade, upgrade
from ledgerx.db.models import BillingDetails
from ledgerx.domain.invoicing import numbering
from ledgerx.domain.ledger import posting
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.notifications import billing_details
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.ledger_helpers import ACTOR, new_project, new_wallet

UTC = dt.UTC
BEFORE = "0015_grant_terms"


@pytest.fixture
async def conn(scratch_database: str) -> AsyncIterator[asyncpg.Connection]:
    """The scratch database at 0015, as its owner."""
    await asyncio.to_thread(upgrade, scratch_database, BEFORE)
    c = await asyncpg.connect(asyncpg_dsn(scratch_database))
    yield c
    await c.close()


async def insert(conn: asyncpg.Connection, table: str, **values: Any) -> uuid.UUID:
    values.setdefault("id", uuid7())
    cols = ", ".join(values)
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", *values.values())
    rid: uuid.UUID = values["id"]
    return rid


async def paid_invoice(
    conn: asyncpg.Connection, project_id: uuid.UUID, total: int, paid_at: dt.datetime | None, **extra: Any
) -> uuid.UUID:
    status = extra.pop("status", "PAID")
    invoice = await insert(
        conn,
        "invoices",
        project_id=project_id,
        kind=extra.pop("kind", "SUBSCRIPTION"),
        status=status,
        currency="USD",
        total=total,
        amount_due=total,
        amount_paid=total if status == "PAID" else 0,
        paid_at=paid_at,
        **extra,
    )
    await insert(
        conn,
        "invoice_lines",
        invoice_id=invoice,
        project_id=project_id,
        position=0,
        description="Pro plan",
        amount=total,
        currency="USD",
        quantity=1,
    )
    return invoice


async def numbers(conn: asyncpg.Connection) -> dict[uuid.UUID, tuple[str | None, dt.datetime | None]]:
    rows = await conn.fetch("SELECT id, number, issued_at FROM invoices")
    return {r["id"]: (r["number"], r["issued_at"]) for r in rows}


async def books_clean(svc: Services, *projects: uuid.UUID) -> None:
    for pid in projects:
        report = await verify_ledger(svc.ledger, pid)
        assert report.ok, report.mismatches


async def test_migration_0016_invoices_packs_and_numbers_paid_invoices(
    scratch_database: str, conn: asyncpg.Connection, settings: Settings
) -> None:
    scratch = dataclasses.replace(settings, database_url=scratch_database, db_pool_size=2)
    year = int(await conn.fetchval("SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int"))
    last = year - 1  # two calendar years of history: last year's and this year's

    def at(y: int, month: int, day: int, hour: int = 12) -> dt.datetime:
        return dt.datetime(y, month, day, hour, tzinfo=UTC)

    # The books at 0015: a pack's credits in a wallet (the payment names their transaction).
    old = Services.build(scratch)
    try:
        acme, solo = await new_project(old), await new_project(old)
        wallet = await new_wallet(old, acme)
        bought = await posting.credit_wallet(old.ledger, ACTOR, wallet, 500, f"k-{uuid7()}")
        topped = await posting.credit_wallet(old.ledger, ACTOR, wallet, 100, f"k-{uuid7()}")
        await books_clean(old, acme, solo)
    finally:
        await old.close()

    await conn.execute(
        "INSERT INTO billing_details (project_id, email, legal_name, address_line1, address_city,"
        " address_postal_code, address_country, tax_ids)"
        " VALUES ($1, 'ap@acme.example', 'Acme GmbH', 'Hauptstraße 5', 'Berlin', '10115', 'DE', $2)",
        acme,
        json.dumps([{"type": "eu_vat", "value": "DE811907980"}]),
    )
    pack = await insert(conn, "credit_packs", name="Starter", credits=500, price_amount=1000, currency="USD")
    coupon = await insert(conn, "coupons", code="SAVE20", name="20% off", percent_off=20, duration="ONCE")

    # This year, out of insertion order: paid Jan 15 (#1), created Feb 1 and paid at an unknown
    # instant (#2), the pack bought Mar 10 with a coupon (#3), a top-up paid May 1 (#4); an OPEN one.
    sub_mar = await paid_invoice(conn, acme, 2000, at(year, 1, 15), created_at=at(year, 1, 1))
    unknown = await paid_invoice(conn, acme, 700, None, created_at=at(year, 2, 1))
    open_one = await paid_invoice(conn, acme, 900, None, status="OPEN", created_at=at(year, 1, 20))
    # (The top-up's invoice was created long before it was paid: paid order, not creation order.)
    top_up = await paid_invoice(conn, acme, 100, at(year, 5, 1), kind="TOP_UP", credits=100, created_at=at(year, 1, 2))
    pack_payment = await insert(
        conn,
        "payments",
        project_id=acme,
        kind="CREDIT_PACK",
        status="SUCCEEDED",
        amount=800,
        discount=200,
        coupon_id=coupon,
        currency="USD",
        credits=500,
        credit_pack_id=pack,
        wallet_id=wallet.id,
        transaction_id=bought.transaction.id,
        stripe_checkout_session_id="cs_old",
        stripe_payment_intent_id="pi_old",
        stripe_charge_id="ch_old",
        created_at=at(year, 3, 10),
    )
    top_up_payment = await insert(
        conn,
        "payments",
        project_id=acme,
        kind="CREDIT_PACK",
        status="SUCCEEDED",
        amount=100,
        currency="USD",
        credits=100,
        credit_pack_id=pack,
        invoice_id=top_up,
        wallet_id=wallet.id,
        transaction_id=topped.transaction.id,
        created_at=at(year, 5, 1),
    )
    # Last year, for the project without billing details: a pack (of a pack since removed from
    # the catalog) on Jun 1 (#1), a subscription paid on Dec 31 at 23:30 UTC (#2; still last year).
    old_pack_payment = await insert(
        conn,
        "payments",
        project_id=solo,
        kind="CREDIT_PACK",
        status="SUCCEEDED",
        amount=450,
        currency="USD",
        credits=50,
        created_at=at(last, 6, 1),
    )
    new_year_eve = await paid_invoice(conn, solo, 3000, dt.datetime(last, 12, 31, 23, 30, tzinfo=UTC))
    before_upgrade = [r["id"] for r in await conn.fetch("SELECT id FROM invoices ORDER BY id")]

    await asyncio.to_thread(upgrade, scratch_database)

    # -- the credit-pack invoices ---------------------------------------------------------------------
    packs = await conn.fetch("SELECT * FROM invoices WHERE kind = 'CREDIT_PACK' ORDER BY paid_at")
    assert len(packs) == 2  # not the top-up: it had its invoice
    old_inv, inv = packs
    assert (await conn.fetchval("SELECT invoice_id FROM payments WHERE id = $1", pack_payment)) == inv["id"]
    assert (await conn.fetchval("SELECT invoice_id FROM payments WHERE id = $1", old_pack_payment)) == old_inv["id"]
    assert (await conn.fetchval("SELECT invoice_id FROM payments WHERE id = $1", top_up_payment)) == top_up
    expected = {
        "project_id": acme,
        "status": "PAID",
        "billing_reason": "credit_pack",
        "currency": "USD",
        "total": 800,
        "amount_due": 800,
        "amount_paid": 800,
        "subtotal": 1000,
        "discount": 200,
        "tax": 0,
        "coupon_id": coupon,
        "credits": 500,
        "paid_at": at(year, 3, 10),
        "stripe_charge_id": "ch_old",
        "stripe_payment_intent_id": "pi_old",
    }
    assert {k: inv[k] for k in expected} == expected
    lines = await conn.fetch(
        "SELECT position, kind, description, amount, unit_amount, quantity, discount, currency"
        " FROM invoice_lines WHERE invoice_id = $1 ORDER BY position",
        inv["id"],
    )
    assert [tuple(r) for r in lines] == [
        (0, "ITEM", "Starter (500 credits)", 1000, 1000, 1, 200, "USD"),
        (1, "DISCOUNT", "Coupon SAVE20: 20% off", -200, -200, 1, 0, "USD"),  # as the live invoices say
    ]
    assert sum(r["amount"] for r in lines) == inv["total"]
    old_lines = await conn.fetch(
        "SELECT kind, description, amount FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", old_inv["id"]
    )
    assert [tuple(r) for r in old_lines] == [("ITEM", "Credit pack (50 credits)", 450)]
    assert (old_inv["subtotal"], old_inv["discount"], old_inv["total"]) == (450, 0, 450)
    # The lines that were there: one ITEM each, unit amount where the quantity divides.
    assert await conn.fetchval(
        "SELECT array_agg(DISTINCT (kind, unit_amount = amount)::text) FROM invoice_lines"
        " WHERE invoice_id <> ALL($1::uuid[])",
        [inv["id"], old_inv["id"]],
    ) == ["(ITEM,t)"]

    # -- the numbers: paid order, per year -------------------------------------------------------------
    got = await numbers(conn)
    assert got[sub_mar] == (f"LX-{year}-000001", at(year, 1, 15))
    assert got[unknown] == (f"LX-{year}-000002", at(year, 2, 1))  # no paid_at: its creation
    assert got[inv["id"]] == (f"LX-{year}-000003", at(year, 3, 10))
    assert got[top_up] == (f"LX-{year}-000004", at(year, 5, 1))
    assert got[old_inv["id"]] == (f"LX-{last}-000001", at(last, 6, 1))
    assert got[new_year_eve] == (f"LX-{last}-000002", dt.datetime(last, 12, 31, 23, 30, tzinfo=UTC))
    assert got[open_one] == (None, None)
    sequences = await conn.fetch("SELECT kind, year, last_value FROM document_sequences ORDER BY year")
    assert [tuple(r) for r in sequences] == [("INVOICE", last, 2), ("INVOICE", year, 4)]

    # -- the billing details, as the project has them, on its numbered invoices -----------------------
    svc = Services.build(scratch)
    try:
        async with svc.db.transaction(project_id=acme) as s:
            row = await s.get(BillingDetails, acme)
            assert row is not None
            live = billing_details.snapshot(billing_details.record_of(row))
        assert live["legalName"] == "Acme GmbH" and live["taxIds"] == [{"type": "eu_vat", "value": "DE811907980"}]
        snaps = await conn.fetch("SELECT id, project_id, number, billing_details FROM invoices")
        for r in snaps:
            if r["number"] is None:
                assert r["billing_details"] is None, r["id"]
            elif r["project_id"] == acme:
                # The same snapshot the issuing code takes (so PDFs read both alike).
                assert json.loads(r["billing_details"]) == live, r["id"]
            else:
                assert r["billing_details"] is None, r["id"]  # solo has no billing details

        # -- the next issue continues this year's sequence ------------------------------------------------
        async with svc.db.transaction() as s:
            number, issued = await numbering.take(s, numbering.DocumentKind.INVOICE, svc.settings.invoice_number_prefix)
        # (Taken this year: #5; a run that crossed New Year's midnight UTC starts the new year at #1.)
        this = issued.astimezone(UTC).year
        assert number == f"LX-{this}-{5 if this == year else 1:06d}"
        async with svc.db.transaction() as s:
            note, _ = await numbering.take(s, numbering.DocumentKind.CREDIT_NOTE, svc.settings.invoice_number_prefix)
        assert note.endswith("-000001") and "-CN-" in note
        await books_clean(svc, acme, solo)
    finally:
        await svc.close()

    # -- the CHECKs ------------------------------------------------------------------------------------------
    with pytest.raises(asyncpg.CheckViolationError):  # a number without its issue instant
        await conn.execute("UPDATE invoices SET number = 'LX-1999-000001' WHERE id = $1", open_one)
    with pytest.raises(asyncpg.CheckViolationError):  # an issue instant without a number
        await conn.execute("UPDATE invoices SET issued_at = now() WHERE id = $1", open_one)
    with pytest.raises(asyncpg.UniqueViolationError):  # one number, one invoice
        await conn.execute(
            "UPDATE invoices SET number = $2, issued_at = now() WHERE id = $1", open_one, f"LX-{year}-000001"
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE invoices SET discount = -1 WHERE id = $1", open_one)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE invoice_lines SET kind = 'FEE' WHERE invoice_id = $1", open_one)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE document_sequences SET last_value = 0")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("INSERT INTO document_sequences (kind, year, last_value) VALUES ('RECEIPT', 2026, 1)")

    # -- down to 0015: the pack invoices go, everything else is as it was -----------------------------------
    await asyncio.to_thread(downgrade, scratch_database, BEFORE)
    assert [r["id"] for r in await conn.fetch("SELECT id FROM invoices ORDER BY id")] == before_upgrade
    assert await conn.fetchval("SELECT count(*) FROM invoice_lines") == len(before_upgrade)
    assert await conn.fetchval("SELECT invoice_id FROM payments WHERE id = $1", pack_payment) is None
    assert await conn.fetchval("SELECT invoice_id FROM payments WHERE id = $1", old_pack_payment) is None
    gone = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        " AND (table_name IN ('document_sequences', 'credit_notes', 'tax_rates')"
        "      OR (table_name = 'invoices' AND column_name IN ('number', 'issued_at', 'billing_details')))"
    )
    assert gone == []
    with pytest.raises(asyncpg.CheckViolationError):  # the old kinds again
        await conn.execute("UPDATE invoices SET kind = 'CREDIT_PACK' WHERE id = $1", open_one)

    # -- and up again: the same invoices get the same numbers -------------------------------------------------
    await asyncio.to_thread(upgrade, scratch_database)
    again = await numbers(conn)
    for invoice in (sub_mar, unknown, new_year_eve, open_one):
        assert again[invoice] == got[invoice]
    repacked = await conn.fetch(
        "SELECT i.number FROM payments p JOIN invoices i ON i.id = p.invoice_id"
        " WHERE p.id = ANY($1::uuid[]) ORDER BY i.paid_at",
        [pack_payment, old_pack_payment],
    )
    assert [r["number"] for r in repacked] == [got[old_inv["id"]][0], got[inv["id"]][0]]
    svc = Services.build(scratch)
    try:
        await books_clean(svc, acme, solo)
    finally:
        await svc.close()


async def test_downgrade_keeps_a_top_up_payment_linked_to_its_invoice(
    scratch_database: str, conn: asyncpg.Connection
) -> None:
    pid = uuid7()
    await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'top-up')", pid)
    top_up = await paid_invoice(conn, pid, 100, dt.datetime(2025, 5, 1, tzinfo=UTC), kind="TOP_UP", credits=10)
    payment = await insert(
        conn,
        "payments",
        project_id=pid,
        kind="CREDIT_PACK",
        status="SUCCEEDED",
        amount=100,
        currency="USD",
        credits=10,
        invoice_id=top_up,
    )
    await asyncio.to_thread(upgrade, scratch_database)
    assert await conn.fetchval("SELECT invoice_id FROM payments WHERE id = $1", payment) == top_up
    await asyncio.to_thread(downgrade, scratch_database, BEFORE)
    assert await conn.fetchval("SELECT count(*) FROM invoices WHERE id = $1", top_up) == 1
    assert await conn.fetchval("SELECT invoice_id FROM payments WHERE id = $1", payment) == top_up
    # (Else the next upgrade would invoice the top-up's money a second time, as a CREDIT_PACK invoice.)
    await asyncio.to_thread(upgrade, scratch_database)
    assert await conn.fetchval("SELECT count(*) FROM invoices WHERE project_id = $1", pid) == 1


async def test_downgrade_after_a_pack_was_refunded_with_a_credit_note(
    scratch_database: str, conn: asyncpg.Connection
) -> None:
    pid = uuid7()
    await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'refunded')", pid)
    await insert(
        conn, "payments", project_id=pid, kind="CREDIT_PACK", status="REFUNDED", amount=500, currency="USD",
        amount_refunded=500, credits=50,
    )  # fmt: skip
    await asyncio.to_thread(upgrade, scratch_database)
    invoice = await conn.fetchval("SELECT id FROM invoices WHERE project_id = $1", pid)
    await insert(
        conn, "credit_notes", project_id=pid, invoice_id=invoice, number="LX-CN-2025-000001", currency="USD",
        subtotal=500, tax=0, total=500, lines="[]", reason="refund",
    )  # fmt: skip
    await asyncio.to_thread(downgrade, scratch_database, BEFORE)
    assert await conn.fetchval("SELECT count(*) FROM invoices WHERE project_id = $1", pid) == 0


async def test_a_trials_zero_invoice_stays_unnumbered(scratch_database: str, conn: asyncpg.Connection) -> None:
    pid = uuid7()
    await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'trial')", pid)
    trial = await paid_invoice(conn, pid, 0, dt.datetime(2025, 2, 1, tzinfo=UTC))
    paid = await paid_invoice(conn, pid, 2000, dt.datetime(2025, 3, 1, tzinfo=UTC))
    await asyncio.to_thread(upgrade, scratch_database)
    got = await numbers(conn)
    assert got[paid][0] == "LX-2025-000001"
    assert got[trial] == (None, None)


async def test_the_backfill_runs_for_an_owner_that_is_not_a_superuser(scratch_database: str) -> None:
    """Managed databases give the migrating owner no superuser. The tables force row-level security
    on their owner too, so the backfill must take the system path, or it fills in nothing at all."""
    role = f"lx_owner_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(scratch_database)
    db = parts.path.lstrip("/")
    owner_url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
    admin = await asyncpg.connect(asyncpg_dsn(scratch_database))  # a superuser: no RLS binds it
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER')
        await admin.execute(f'ALTER DATABASE "{db}" OWNER TO "{role}"')
        await admin.execute(f'GRANT ALL ON SCHEMA public TO "{role}"')
        await asyncio.to_thread(upgrade, owner_url, BEFORE)
        pid = uuid7()
        await admin.execute("INSERT INTO projects (id, name) VALUES ($1, 'managed')", pid)
        paid = await paid_invoice(admin, pid, 2000, dt.datetime(2025, 4, 1, tzinfo=UTC))
        pack = await insert(
            admin, "payments", project_id=pid, kind="CREDIT_PACK", status="SUCCEEDED", amount=900, currency="USD",
            credits=90,
        )  # fmt: skip
        await asyncio.to_thread(upgrade, owner_url)
        row = await admin.fetchrow("SELECT number, subtotal, issued_at FROM invoices WHERE id = $1", paid)
        assert (row["number"], row["subtotal"]) == ("LX-2025-000001", 2000)
        made = await admin.fetchval("SELECT invoice_id FROM payments WHERE id = $1", pack)
        assert made is not None
        kind, number = await admin.fetchrow("SELECT kind, number FROM invoices WHERE id = $1", made)
        assert kind == "CREDIT_PACK" and number is not None
        await asyncio.to_thread(downgrade, owner_url, BEFORE)  # on the system path too
        assert await admin.fetchval("SELECT count(*) FROM invoices WHERE project_id = $1", pid) == 1
    finally:
        await admin.execute(f'ALTER DATABASE "{db}" OWNER TO CURRENT_USER')
        await admin.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()
