"""SQL the migrations use for grants, row-level security and append-only tables.

Revisions call these so every tenant table gets the same wall. Changing what a helper emits
changes only future revisions; existing databases keep what they ran.
"""

from __future__ import annotations

import os

# The projects the current transaction may see: a comma-separated list set with SET LOCAL.
PROJECT_IDS = "string_to_array(NULLIF(current_setting('ledgerx.project_ids', true), ''), ',')::uuid[]"
USER_SETTING = "NULLIF(current_setting('ledgerx.user_id', true), '')::uuid"
SYSTEM_SCOPE = "current_setting('ledgerx.scope', true) = 'system'"


def app_role() -> str:
    return os.environ.get("LEDGERX_DB_APP_ROLE") or "ledgerx_app"


def create_app_role_sql() -> list[str]:
    role = app_role()
    return [
        # Concurrent migrations of several databases on one cluster race on the role: tolerate it.
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
            CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
          END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$
        """,
        # The owner logs in and switches to the app role, so it must be a member (a superuser
        # needs no membership; a managed-database owner with CREATEROLE gets it here).
        f"""
        DO $$ BEGIN
          IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
            EXECUTE format('GRANT {role} TO %I', current_user);
          END IF;
        EXCEPTION WHEN OTHERS THEN
          RAISE WARNING 'could not grant {role} to %: %', current_user, SQLERRM;
        END $$
        """,
        f"GRANT USAGE ON SCHEMA public TO {role}",
        """
        CREATE OR REPLACE FUNCTION ledgerx_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege';
        END $$
        """,
    ]


def grant_sql(table: str, privileges: str) -> str:
    return f"GRANT {privileges} ON {table} TO {app_role()}"


def append_only_sql(table: str) -> list[str]:
    """Refuse UPDATE, DELETE and TRUNCATE for everyone, the owner included (triggers)."""
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION ledgerx_refuse_change()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledgerx_refuse_change()",
    ]


def tenant_match(column: str = "project_id") -> str:
    return f"({column} = ANY ({PROJECT_IDS}) OR {SYSTEM_SCOPE})"


def tenant_rls_sql(table: str, column: str = "project_id") -> list[str]:
    """Rows are visible only inside their project's transaction, or on the explicit system path."""
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_tenant ON {table} USING ({tenant_match(column)}) WITH CHECK ({tenant_match(column)})",
    ]
