"""tenancy: projects, members, invites, API keys, mail outbox; row-level security

Revision ID: 0002_tenancy
Revises: 0001_identity
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0002_tenancy"
down_revision = "0001_identity"
branch_labels = None
depends_on = None

ROLE_CHECK = "role IN ('OWNER', 'ADMIN', 'MEMBER', 'VIEWER')"


def _ts(name: str, *, nullable: bool = True, now: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=sa.func.now() if now else None)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("external_key", sa.Text(), unique=True),
        sa.Column("status", sa.Text(), nullable=False, server_default="ACTIVE"),
        sa.Column("suspended_reason", sa.Text()),
        _ts("suspended_at"),
        sa.Column("test_mode", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("overrides", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_by", pg.UUID(as_uuid=True)),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint("status IN ('ACTIVE', 'SUSPENDED')", name="status"),
        sa.CheckConstraint("length(btrim(name)) BETWEEN 1 AND 200", name="name"),
    )
    op.create_table(
        "project_members",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "project_id", pg.UUID(as_uuid=True), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("user_id", pg.UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint(ROLE_CHECK, name="role"),
        sa.UniqueConstraint("project_id", "user_id", name="uq_project_members_project_user"),
    )
    op.create_index("ix_project_members_user", "project_members", ["user_id"])
    # Exactly one owner per project: at most one by this index, at least one by the domain rules
    # (the owner can only change through transferOwnership, in one transaction).
    op.create_index(
        "uq_project_members_one_owner",
        "project_members",
        ["project_id"],
        unique=True,
        postgresql_where=sa.text("role = 'OWNER'"),
    )
    op.create_table(
        "invites",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "project_id", pg.UUID(as_uuid=True), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("invited_by", pg.UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="SET NULL")),
        _ts("created_at", nullable=False, now=True),
        _ts("expires_at", nullable=False),
        _ts("last_sent_at"),
        sa.Column("resend_count", sa.Integer(), nullable=False, server_default="0"),
        _ts("accepted_at"),
        sa.Column("accepted_by", pg.UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="SET NULL")),
        _ts("revoked_at"),
        sa.CheckConstraint("role IN ('ADMIN', 'MEMBER', 'VIEWER')", name="role"),
    )
    op.create_index("ix_invites_project", "invites", ["project_id", "id"])
    # At most one open invitation per address and project (an expired one is closed on re-invite).
    op.create_index(
        "uq_invites_open_email",
        "invites",
        ["project_id", sa.text("lower(email)")],
        unique=True,
        postgresql_where=sa.text("accepted_at IS NULL AND revoked_at IS NULL"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "project_id", pg.UUID(as_uuid=True), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("public_id", sa.Text(), nullable=False, unique=True),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("previous_secret_hash", sa.LargeBinary()),
        _ts("previous_expires_at"),
        sa.Column("scopes", pg.ARRAY(sa.Text()), nullable=False, server_default="{}"),
        sa.Column("created_by", pg.UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="SET NULL")),
        _ts("created_at", nullable=False, now=True),
        _ts("rotated_at"),
        _ts("revoked_at"),
        _ts("last_used_at"),
    )
    op.create_index("ix_api_keys_project", "api_keys", ["project_id", "id"])
    op.create_table(
        "mail_outbox",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("project_id", pg.UUID(as_uuid=True)),
        sa.Column("to_addr", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        _ts("created_at", nullable=False, now=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _ts("next_attempt_at", nullable=False, now=True),
        _ts("sent_at"),
        sa.Column("last_error", sa.Text()),
    )
    op.create_index(
        "ix_mail_outbox_due", "mail_outbox", ["next_attempt_at"], postgresql_where=sa.text("sent_at IS NULL")
    )

    # Grants: the app role reads and writes, never deletes projects or keys (revocation is a flag).
    op.execute(rls.grant_sql("projects", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("project_members", "SELECT, INSERT, UPDATE, DELETE"))
    op.execute(rls.grant_sql("invites", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("api_keys", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("mail_outbox", "SELECT, INSERT, UPDATE"))

    # Row-level security. Tenant rows are visible inside their project's transaction (or on the
    # explicit system path). Two additions: a user finds their own memberships across projects,
    # and the projects they belong to, so `projects` can list them before any project is chosen.
    for table in ("invites", "api_keys", "mail_outbox"):
        for stmt in rls.tenant_rls_sql(table):
            op.execute(stmt)
    own = f"user_id = {rls.USER_SETTING}"
    for stmt in (
        "ALTER TABLE project_members ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE project_members FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY project_members_tenant ON project_members USING ({rls.tenant_match()} OR {own}) "
        f"WITH CHECK ({rls.tenant_match()})",
        "ALTER TABLE projects ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE projects FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY projects_tenant ON projects USING ({rls.tenant_match('id')} OR EXISTS ("
        f"SELECT 1 FROM project_members m WHERE m.project_id = projects.id AND m.{own})) "
        f"WITH CHECK ({rls.tenant_match('id')})",
        # The audit log: tenant rows by project; rows without a project (sign-ins) only on the
        # system path. Inserts of either kind are allowed: every action must be recordable.
        "ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE audit_log FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY audit_log_read ON audit_log FOR SELECT USING ({rls.tenant_match()})",
        "CREATE POLICY audit_log_insert ON audit_log FOR INSERT WITH CHECK (true)",
    ):
        op.execute(stmt)


def downgrade() -> None:
    op.execute("DROP POLICY IF EXISTS audit_log_read ON audit_log")
    op.execute("DROP POLICY IF EXISTS audit_log_insert ON audit_log")
    op.execute("ALTER TABLE audit_log DISABLE ROW LEVEL SECURITY")
    for t in ("mail_outbox", "api_keys", "invites", "project_members", "projects"):
        op.drop_table(t)
