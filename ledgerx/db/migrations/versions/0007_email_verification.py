"""email verification: mailed single-use links; existing users and stale invitations

Revision ID: 0007_email_verification
Revises: 0006_payments
Create Date: 2026-12-05

Adds `email_verifications` (one row per mailed link: the SHA-256 of its token, the address it
went to, expiry, used/revoked marks). The table holds credentials of every user, so only the
explicit system path sees it (row-level security), like the Stripe inbox.

Existing users. `users.email_verified` existed since 0001 but only Google sign-in ever set it,
and Google accounts were created or linked only when Google said the address was verified, so
those stay true. Of the others, exactly the users who accepted an invitation mailed to their own
address have proved it (the token only ever reached that mailbox): they become verified. Every
other existing password account stays unverified: nothing proves its owner holds the address, and
that is precisely the gap this revision closes (someone could have signed up with a colleague's
address). Nothing is taken away from them: memberships stay, sign-in works; `addMember` sends them
an invitation instead of adding them directly, and `resendVerification` mails them a link.

Stale invitations. Invitations still open whose inviter is no longer allowed to invite in that
project (no longer OWNER/ADMIN there, and not a platform admin) are revoked, as the application
now does in the same transaction as the role change or removal. Rows whose inviter is unknown
(the user was deleted) are left alone.

Downgrade drops the table; the verified flags and revocations it set are kept (they are facts).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0007_email_verification"
down_revision = "0006_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "email_verifications",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("user_id", pg.UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_email_verifications_user_id", "email_verifications", ["user_id"])
    op.execute(rls.grant_sql("email_verifications", "SELECT, INSERT, UPDATE"))
    for stmt in (
        "ALTER TABLE email_verifications ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE email_verifications FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY email_verifications_system ON email_verifications USING ({rls.SYSTEM_SCOPE})"
        f" WITH CHECK ({rls.SYSTEM_SCOPE})",
    ):
        op.execute(stmt)

    # The tables below are FORCE ROW LEVEL SECURITY, which binds their owner (this migration's
    # role) too: without the system scope they would look empty and every invitation would be
    # judged inviter-less. SET LOCAL semantics: the setting dies with the migration's transaction.
    op.execute("SELECT set_config('ledgerx.scope', 'system', true)")
    # Accepting an invitation mailed to one's own address proved that address.
    op.execute(
        """
        UPDATE users u SET email_verified = true
         WHERE NOT u.email_verified
           AND EXISTS (SELECT 1 FROM invites i
                        WHERE i.accepted_by = u.id AND lower(i.email) = lower(u.email))
        """
    )
    # Open invitations of inviters who may no longer invite there.
    op.execute(
        """
        UPDATE invites i SET revoked_at = now()
         WHERE i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.invited_by IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = i.invited_by AND u.is_platform_admin)
           AND NOT EXISTS (SELECT 1 FROM project_members m
                            WHERE m.project_id = i.project_id AND m.user_id = i.invited_by
                              AND m.role IN ('OWNER', 'ADMIN'))
        """
    )


def downgrade() -> None:
    op.drop_table("email_verifications")
