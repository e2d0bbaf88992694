"""grant terms of the catalog: a credit pack's validity, a plan's credit rollover

Revision ID: 0015_grant_terms
Revises: 0014_auto_top_up
Create Date: 2026-12-05

`credit_packs.validity_days` (NULL: the credits never expire): a purchase of the pack (Checkout or
auto top-up) makes a PAID grant expiring that many days after the payment is recorded.

`plans.rollover_credits`: the plan's included credits are PROMOTIONAL grants without expiry instead
of expiring at the end of the period they were included for.

Existing packs keep credits that never expire and existing plans keep expiring credits: the
catalog sells what it sold before until an admin changes it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_grant_terms"
down_revision = "0014_auto_top_up"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("credit_packs", sa.Column("validity_days", sa.Integer()))
    op.create_check_constraint("validity_days", "credit_packs", "validity_days BETWEEN 1 AND 3650")
    op.add_column("plans", sa.Column("rollover_credits", sa.Boolean(), nullable=False, server_default=sa.text("false")))


def downgrade() -> None:
    op.drop_column("plans", "rollover_credits")
    op.drop_column("credit_packs", "validity_days")
