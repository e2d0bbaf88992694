"""invoicing: LedgerX's own invoice numbers, taxes, billing-detail snapshots, credit notes and tax rates

Revision ID: 0016_invoicing
Revises: 0015_grant_terms
Create Date: 2026-12-05

`document_sequences` (platform table, no RLS): one counter per document kind (INVOICE,
CREDIT_NOTE) and calendar year. A number is taken with an upsert that increments the counter in the
issuing transaction, so the row lock orders concurrent issuers and a rolled-back issue gives its
number back: the sequence has no gap and no repeat.

`invoices` gains what an issued invoice shows: `number` and `issued_at` (set once, when it is
issued), `subtotal`, `discount`, `tax`, `tax_lines`, `tax_note`, the buyer's `billing_details` as
they were at issue, the tax rate applied, and `amount_credited` (its credit notes). Lines gain
`kind` (ITEM or DISCOUNT), `unit_amount`, and their share of the discount and of the tax.

`credit_notes` (tenant table, RLS on `project_id`): one per Stripe refund (`stripe_refund_id`
unique), numbered from its own sequence, linked to its invoice.

`tax_rates` (platform table): the rates platform admins define for TAX_MODE=rates; at most one
live rate per country and state.

Existing data: every credit-pack payment gets the PAID `CREDIT_PACK` invoice it would have got
(its price, its coupon as a discount line); then every PAID invoice that moved money (total above
zero: a trial's zero invoice is not numbered, as issuing.py does) is numbered in the order it was
paid, per year of payment, with the billing details the project has now (the best record there
is) and no tax (none was computed before). Unpaid invoices stay unnumbered until they are paid.
Refunds made before the upgrade get no credit notes (their numbers would be dated today).
"""

from __future__ import annotations

import os
import re

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0016_invoicing"
down_revision = "0015_grant_terms"
branch_labels = None
depends_on = None

_UUID = pg.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)


def _prefix() -> str:
    """INVOICE_NUMBER_PREFIX as the running server reads it (settings.py checks the same rule)."""
    value = os.environ.get("INVOICE_NUMBER_PREFIX") or "LX-"
    if not re.fullmatch(r"[A-Za-z0-9-]{1,16}", value):
        raise ValueError(f"INVOICE_NUMBER_PREFIX: expected 1-16 letters, digits or dashes, got {value!r}")
    return value


def upgrade() -> None:
    op.create_table(
        "document_sequences",
        sa.Column("kind", sa.Text(), primary_key=True),
        sa.Column("year", sa.Integer(), primary_key=True),
        sa.Column("last_value", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('INVOICE', 'CREDIT_NOTE')", name="kind"),
        sa.CheckConstraint("last_value > 0", name="last_value"),
    )
    op.create_table(
        "tax_rates",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("percentage", sa.Numeric(7, 4), nullable=False),
        sa.Column("inclusive", sa.Boolean(), nullable=False),
        sa.Column("country", sa.Text(), nullable=False),
        sa.Column("state", sa.Text()),
        sa.Column("stripe_tax_rate_id", sa.Text()),
        sa.Column("archived_at", _TS),
        sa.Column("created_by", _UUID),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("percentage >= 0 AND percentage <= 100", name="percentage"),
        sa.CheckConstraint("country ~ '^[A-Z]{2}$'", name="country"),
        sa.CheckConstraint("length(btrim(name)) BETWEEN 1 AND 100", name="name"),
    )
    op.create_index(
        "ux_tax_rates_place",
        "tax_rates",
        ["country", sa.text("coalesce(state, '')")],
        unique=True,
        postgresql_where=sa.text("archived_at IS NULL"),
    )

    op.add_column("invoices", sa.Column("number", sa.Text(), unique=True))
    op.add_column("invoices", sa.Column("issued_at", _TS))
    op.add_column("invoices", sa.Column("subtotal", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("invoices", sa.Column("discount", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("invoices", sa.Column("tax", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("invoices", sa.Column("tax_lines", pg.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")))
    op.add_column("invoices", sa.Column("tax_note", sa.Text()))
    op.add_column("invoices", sa.Column("tax_rate_id", _UUID, sa.ForeignKey("tax_rates.id", ondelete="RESTRICT")))
    op.add_column("invoices", sa.Column("billing_details", pg.JSONB()))
    op.add_column("invoices", sa.Column("amount_credited", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("invoices", sa.Column("coupon_id", _UUID, sa.ForeignKey("coupons.id", ondelete="RESTRICT")))
    op.execute("ALTER TABLE invoices DROP CONSTRAINT ck_invoices_kind")
    op.execute(
        "ALTER TABLE invoices ADD CONSTRAINT ck_invoices_kind"
        " CHECK (kind IN ('SUBSCRIPTION', 'PRORATION', 'OTHER', 'TOP_UP', 'CREDIT_PACK'))"
    )
    op.create_check_constraint("issued", "invoices", "(number IS NULL) = (issued_at IS NULL)")
    op.create_check_constraint(
        "document_amounts", "invoices", "subtotal >= 0 AND discount >= 0 AND tax >= 0 AND amount_credited >= 0"
    )
    op.create_index("ix_invoices_issued", "invoices", ["issued_at"], postgresql_where=sa.text("issued_at IS NOT NULL"))

    op.add_column("invoice_lines", sa.Column("kind", sa.Text(), nullable=False, server_default="ITEM"))
    op.add_column("invoice_lines", sa.Column("unit_amount", sa.BigInteger()))
    op.add_column("invoice_lines", sa.Column("discount", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("invoice_lines", sa.Column("tax", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_check_constraint("kind", "invoice_lines", "kind IN ('ITEM', 'DISCOUNT')")

    op.create_table(
        "credit_notes",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("invoice_id", _UUID, sa.ForeignKey("invoices.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("number", sa.Text(), nullable=False, unique=True),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("subtotal", sa.BigInteger(), nullable=False),
        sa.Column("tax", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("lines", pg.JSONB(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("stripe_refund_id", sa.Text(), unique=True),
        sa.Column("billing_details", pg.JSONB()),
        sa.Column("issued_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("total > 0 AND subtotal >= 0 AND tax >= 0 AND subtotal + tax = total", name="amounts"),
    )
    op.create_index("ix_credit_notes_invoice", "credit_notes", ["invoice_id", "issued_at"])
    op.create_index("ix_credit_notes_project", "credit_notes", ["project_id", "id"])

    op.execute(rls.grant_sql("document_sequences", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("tax_rates", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("credit_notes", "SELECT, INSERT"))
    for stmt in rls.tenant_rls_sql("credit_notes"):
        op.execute(stmt)

    _backfill()


def _backfill() -> None:
    # The tables force row-level security on their owner too: this is the system path (0013 does
    # the same), else a non-superuser owner (a managed database) would fill in nothing at all.
    op.execute("SELECT set_config('ledgerx.scope', 'system', true)")
    # Existing lines: what they were (one ITEM each), their unit amount where it divides.
    op.execute(
        "UPDATE invoice_lines SET unit_amount = CASE WHEN quantity > 0 AND amount % quantity = 0"
        " THEN amount / quantity ELSE amount END"
    )
    op.execute("UPDATE invoices SET subtotal = GREATEST(total, 0)")
    # Credit-pack purchases made before invoices existed for them.
    op.execute(
        """
        CREATE TEMP TABLE _pack_invoices ON COMMIT DROP AS
        SELECT p.id AS payment_id,
               -- Time-ordered like the app's UUIDv7 ids (listings are newest first by id): the
               -- payment's time in milliseconds, version 7, the variant, then bits of the payment id.
               (lpad(to_hex((extract(epoch FROM p.created_at) * 1000)::bigint), 12, '0') || '7'
                || substr(md5(p.id::text), 1, 3) || '8' || substr(md5(p.id::text), 4, 15))::uuid AS invoice_id,
               p.project_id, p.amount, p.discount,
               p.currency, p.credits, p.created_at, p.coupon_id, p.stripe_charge_id, p.transaction_id,
               p.stripe_payment_intent_id, coalesce(cp.name, 'Credit pack') AS pack_name,
               CASE WHEN c.id IS NULL THEN 'Discount' ELSE 'Coupon ' || c.code || ': ' || c.name END AS discount_label
        FROM payments p
        LEFT JOIN credit_packs cp ON cp.id = p.credit_pack_id
        LEFT JOIN coupons c ON c.id = p.coupon_id
        WHERE p.kind = 'CREDIT_PACK' AND p.invoice_id IS NULL
        """
    )
    op.execute(
        """
        INSERT INTO invoices (id, project_id, kind, billing_reason, status, currency, total, amount_due,
                              amount_paid, paid_at, credits, subtotal, discount, coupon_id, grant_transaction_id,
                              stripe_charge_id, stripe_payment_intent_id, created_at, updated_at)
        SELECT invoice_id, project_id, 'CREDIT_PACK', 'credit_pack', 'PAID', currency, amount, amount,
               amount, created_at, credits, amount + discount, discount, coupon_id, transaction_id,
               stripe_charge_id, stripe_payment_intent_id, created_at, created_at
        FROM _pack_invoices
        """
    )
    op.execute(
        """
        INSERT INTO invoice_lines (id, invoice_id, project_id, position, kind, description, amount, unit_amount,
                                   discount, currency, quantity)
        SELECT gen_random_uuid(), invoice_id, project_id, 0, 'ITEM',
               pack_name || ' (' || to_char(credits, 'FM999,999,999,999,999,999') || ' credits)',
               amount + discount, amount + discount, discount,
               currency, 1
        FROM _pack_invoices
        UNION ALL
        SELECT gen_random_uuid(), invoice_id, project_id, 1, 'DISCOUNT', discount_label, -discount, -discount, 0,
               currency, 1
        FROM _pack_invoices WHERE discount > 0
        """
    )
    op.execute("UPDATE payments p SET invoice_id = t.invoice_id FROM _pack_invoices t WHERE p.id = t.payment_id")
    # Number every paid invoice in the order it was paid, per year, with today's billing details.
    op.execute(
        f"""
        WITH ordered AS (
          SELECT i.id, coalesce(i.paid_at, i.created_at) AS at,
                 extract(year FROM coalesce(i.paid_at, i.created_at) AT TIME ZONE 'UTC')::int AS year,
                 row_number() OVER (
                   PARTITION BY extract(year FROM coalesce(i.paid_at, i.created_at) AT TIME ZONE 'UTC')
                   ORDER BY coalesce(i.paid_at, i.created_at), i.id) AS n
          FROM invoices i WHERE i.status = 'PAID' AND i.number IS NULL AND i.total > 0
        )
        UPDATE invoices i
        SET number = '{_prefix()}' || o.year || '-' || CASE WHEN o.n < 1000000 THEN lpad(o.n::text, 6, '0')
                                                          ELSE o.n::text END,
            issued_at = o.at,
            billing_details = (
              SELECT jsonb_build_object(
                'email', b.email, 'legalName', b.legal_name,
                'address', CASE WHEN b.address_country IS NULL THEN NULL ELSE jsonb_build_object(
                  'line1', b.address_line1, 'line2', b.address_line2, 'city', b.address_city,
                  'postal_code', b.address_postal_code, 'state', b.address_state, 'country', b.address_country) END,
                'taxIds', b.tax_ids)
              FROM billing_details b WHERE b.project_id = i.project_id)
        FROM ordered o WHERE o.id = i.id
        """
    )
    op.execute(
        """
        INSERT INTO document_sequences (kind, year, last_value)
        SELECT 'INVOICE', extract(year FROM issued_at AT TIME ZONE 'UTC')::int, count(*)
        FROM invoices WHERE number IS NOT NULL
        GROUP BY 2
        """
    )


def downgrade() -> None:
    op.execute("SELECT set_config('ledgerx.scope', 'system', true)")
    # Credit notes first: they name the invoices deleted below.
    op.drop_table("credit_notes")
    op.execute("DELETE FROM invoice_lines WHERE invoice_id IN (SELECT id FROM invoices WHERE kind = 'CREDIT_PACK')")
    # Only the payments of the invoices going away (a top-up's payment is a CREDIT_PACK payment of a
    # TOP_UP invoice, which stays).
    op.execute(
        "UPDATE payments SET invoice_id = NULL WHERE invoice_id IN (SELECT id FROM invoices WHERE kind = 'CREDIT_PACK')"
    )
    op.execute("DELETE FROM invoices WHERE kind = 'CREDIT_PACK'")
    op.execute("ALTER TABLE invoices DROP CONSTRAINT ck_invoices_kind")
    op.execute(
        "ALTER TABLE invoices ADD CONSTRAINT ck_invoices_kind"
        " CHECK (kind IN ('SUBSCRIPTION', 'PRORATION', 'OTHER', 'TOP_UP'))"
    )
    op.drop_constraint("kind", "invoice_lines", type_="check")
    for column in ("tax", "discount", "unit_amount", "kind"):
        op.drop_column("invoice_lines", column)
    op.drop_index("ix_invoices_issued", "invoices")
    op.drop_constraint("document_amounts", "invoices", type_="check")
    op.drop_constraint("issued", "invoices", type_="check")
    for column in (
        "coupon_id",
        "amount_credited",
        "billing_details",
        "tax_rate_id",
        "tax_note",
        "tax_lines",
        "tax",
        "discount",
        "subtotal",
        "issued_at",
        "number",
    ):
        op.drop_column("invoices", column)
    op.drop_table("tax_rates")
    op.drop_table("document_sequences")
