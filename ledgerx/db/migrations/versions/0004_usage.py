"""usage: metrics, partitioned append-only events, idempotency keys, rollups, charge remainders

Revision ID: 0004_usage
Revises: 0003_ledger
Create Date: 2026-11-22

Layout (docs/usage.md explains the choices):
- `usage_events` is range-partitioned by month on `occurred_at`. A partitioned table's unique
  indexes must contain the partition key, so idempotency is enforced by `usage_event_keys`
  (project_id, idempotency_key), one plain table across all partitions.
- `usage_rollups` keeps per-minute and per-15-minute sum/count/max per metric, and
  `usage_rollup_values` the distinct property values of UNIQUE metrics at both widths. They are
  updated in the transaction (the statement) that inserts the events; summaries read only them.
- `usage_charges` (append-only) records every priced charge; `usage_charge_remainders` carries
  the sub-unit remainder per wallet and metric.
- Partitions are created ahead by `ledgerx_usage_ensure_partitions` (SECURITY DEFINER, so the app
  role, which owns nothing, may create a missing month on demand) and detached after retention by
  `ledgerx_usage_detach_partitions` (owner only).
"""

from __future__ import annotations

from alembic import op

from ledgerx.db import rls

revision = "0004_usage"
down_revision = "0003_ledger"
branch_labels = None
depends_on = None

# Months of partitions the migration creates around "now"; the maintenance function and the
# ingestion path create the others when they are needed.
MONTHS_BEHIND = 2
MONTHS_AHEAD = 3

ENSURE_PARTITIONS = """
CREATE OR REPLACE FUNCTION ledgerx_usage_ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  m timestamp := date_trunc('month', from_ts AT TIME ZONE 'UTC');
  last timestamp := date_trunc('month', to_ts AT TIME ZONE 'UTC');
  part text;
  created integer := 0;
BEGIN
  IF from_ts IS NULL OR to_ts IS NULL OR last < m THEN
    RETURN 0;
  END IF;
  IF last - m > interval '10 years' THEN
    RAISE EXCEPTION 'refusing to create more than 10 years of usage partitions at once'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  WHILE m <= last LOOP
    part := 'usage_events_p' || to_char(m, 'YYYYMM');
    IF to_regclass(part) IS NULL THEN
      BEGIN
        EXECUTE format(
          'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
          part, (m AT TIME ZONE 'UTC'), ((m + interval '1 month') AT TIME ZONE 'UTC'));
        -- Row triggers are cloned from the parent; statement-level TRUNCATE triggers are not.
        EXECUTE format(
          'CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION ledgerx_refuse_change()',
          part || '_no_truncate', part);
        created := created + 1;
      EXCEPTION WHEN duplicate_table OR unique_violation OR duplicate_object THEN
        NULL;  -- another session created it first
      END;
    END IF;
    m := m + interval '1 month';
  END LOOP;
  RETURN created;
END $$
"""

# Owner-only: detaches (does not drop) every monthly partition that ends at or before `cutoff`,
# renames it usage_archive_pYYYYMM and forgets the idempotency keys of its events. Returns the
# archive table names; the operator dumps each (pg_dump -t) and drops it. See docs/usage.md.
DETACH_PARTITIONS = """
CREATE OR REPLACE FUNCTION ledgerx_usage_detach_partitions(cutoff timestamptz)
RETURNS SETOF text LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
  r record;
  upper_bound timestamptz;
BEGIN
  -- The keys table forces row-level security on its owner too: act on the system path.
  PERFORM set_config('ledgerx.scope', 'system', true);
  FOR r IN
    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'usage_events'::regclass
    ORDER BY c.relname
  LOOP
    upper_bound := substring(r.bound FROM 'TO \\(''([^'']+)''\\)')::timestamptz;
    IF upper_bound IS NOT NULL AND upper_bound <= cutoff THEN
      EXECUTE format('ALTER TABLE usage_events DETACH PARTITION %I', r.relname);
      -- Renamed so the month's name is free again (a late event would get a fresh partition).
      EXECUTE format('ALTER TABLE %I RENAME TO %I', r.relname, replace(r.relname, 'usage_events_p', 'usage_archive_p'));
      DELETE FROM usage_event_keys WHERE occurred_at < upper_bound;
      RETURN NEXT replace(r.relname, 'usage_events_p', 'usage_archive_p');
    END IF;
  END LOOP;
END $$
"""


def _tenant(table: str) -> None:
    for stmt in rls.tenant_rls_sql(table):
        op.execute(stmt)


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE usage_metrics (
          id uuid PRIMARY KEY,
          project_id uuid NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
          key text NOT NULL,
          name text NOT NULL,
          aggregation text NOT NULL,
          unique_property text,
          unit_price numeric NOT NULL,
          created_by uuid,
          created_at timestamptz NOT NULL DEFAULT now(),
          CONSTRAINT uq_usage_metrics_project_key UNIQUE (project_id, key),
          CONSTRAINT ck_usage_metrics_key CHECK (key ~ '^[a-z][a-z0-9_]{0,63}$'),
          CONSTRAINT ck_usage_metrics_name CHECK (length(btrim(name)) BETWEEN 1 AND 200),
          CONSTRAINT ck_usage_metrics_aggregation CHECK (aggregation IN ('SUM', 'COUNT', 'MAX', 'UNIQUE')),
          CONSTRAINT ck_usage_metrics_unique_property
            CHECK ((aggregation = 'UNIQUE') = (unique_property IS NOT NULL)),
          CONSTRAINT ck_usage_metrics_unit_price CHECK (unit_price >= 0)
        )
        """
    )

    # No foreign keys on the events: a per-row RI check would double the insert cost, and the
    # ingestion path resolves every metric in the same transaction. Nothing references events.
    op.execute(
        """
        CREATE TABLE usage_events (
          id uuid NOT NULL,
          project_id uuid NOT NULL,
          metric_id uuid NOT NULL,
          occurred_at timestamptz NOT NULL,
          received_at timestamptz NOT NULL DEFAULT now(),
          units numeric NOT NULL,
          idempotency_key text NOT NULL,
          wallet_id uuid,
          properties jsonb,
          CONSTRAINT pk_usage_events PRIMARY KEY (id, occurred_at),
          CONSTRAINT ck_usage_events_units CHECK (units >= 0)
        ) PARTITION BY RANGE (occurred_at)
        """
    )
    op.execute("CREATE INDEX ix_usage_events_metric ON usage_events (project_id, metric_id, occurred_at)")

    op.execute(
        """
        CREATE TABLE usage_event_keys (
          project_id uuid NOT NULL,
          idempotency_key text COLLATE "C" NOT NULL,
          event_id uuid NOT NULL,
          occurred_at timestamptz NOT NULL,
          CONSTRAINT pk_usage_event_keys PRIMARY KEY (project_id, idempotency_key),
          CONSTRAINT ck_usage_event_keys_key CHECK (length(idempotency_key) BETWEEN 1 AND 255)
        )
        """
    )

    # width: bucket width in minutes (1 or 15). 15-minute buckets serve HOUR/DAY/MONTH summaries in
    # any time zone (every UTC offset in use since 1980 is a multiple of 15 minutes).
    # shard: concurrent writers of one metric would all update the same bucket row and queue on its
    # lock until they commit; each database session writes its own shard (backend pid mod 8) and
    # summaries add the shards up.
    op.execute(
        """
        CREATE TABLE usage_rollups (
          project_id uuid NOT NULL,
          metric_id uuid NOT NULL,
          width smallint NOT NULL,
          bucket timestamptz NOT NULL,
          shard smallint NOT NULL,
          events bigint NOT NULL,
          units_sum numeric NOT NULL,
          units_max numeric NOT NULL,
          CONSTRAINT pk_usage_rollups PRIMARY KEY (project_id, metric_id, width, bucket, shard),
          CONSTRAINT ck_usage_rollups_width CHECK (width IN (1, 15)),
          CONSTRAINT ck_usage_rollups_shard CHECK (shard BETWEEN 0 AND 7)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE usage_rollup_values (
          project_id uuid NOT NULL,
          metric_id uuid NOT NULL,
          width smallint NOT NULL,
          bucket timestamptz NOT NULL,
          value text COLLATE "C" NOT NULL,
          shard smallint NOT NULL,
          CONSTRAINT pk_usage_rollup_values PRIMARY KEY (project_id, metric_id, width, bucket, value, shard),
          CONSTRAINT ck_usage_rollup_values_width CHECK (width IN (1, 15)),
          CONSTRAINT ck_usage_rollup_values_shard CHECK (shard BETWEEN 0 AND 7)
        )
        """
    )

    op.execute(
        """
        CREATE TABLE usage_charges (
          id uuid PRIMARY KEY,
          project_id uuid NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
          idempotency_key text NOT NULL,
          wallet_id uuid NOT NULL REFERENCES wallets (id) ON DELETE RESTRICT,
          metric_id uuid NOT NULL REFERENCES usage_metrics (id) ON DELETE RESTRICT,
          event_id uuid,
          units numeric NOT NULL,
          unit_price numeric NOT NULL,
          remainder_before numeric NOT NULL,
          total numeric NOT NULL,
          amount bigint NOT NULL,
          remainder_after numeric NOT NULL,
          transaction_id uuid REFERENCES ledger_transactions (id) ON DELETE RESTRICT,
          actor_type text NOT NULL,
          actor_id uuid,
          created_at timestamptz NOT NULL DEFAULT now(),
          CONSTRAINT uq_usage_charges_idempotency UNIQUE (project_id, idempotency_key),
          CONSTRAINT ck_usage_charges_key CHECK (length(idempotency_key) BETWEEN 1 AND 255),
          CONSTRAINT ck_usage_charges_units CHECK (units >= 0 AND unit_price >= 0),
          CONSTRAINT ck_usage_charges_total CHECK (total = units * unit_price + remainder_before),
          CONSTRAINT ck_usage_charges_split CHECK (
            amount >= 0 AND total = amount + remainder_after AND remainder_after >= 0 AND remainder_after < 1),
          CONSTRAINT ck_usage_charges_posting CHECK ((amount > 0) = (transaction_id IS NOT NULL))
        )
        """
    )
    op.execute("CREATE INDEX ix_usage_charges_wallet ON usage_charges (wallet_id, metric_id, id)")
    op.execute(
        """
        CREATE TABLE usage_charge_remainders (
          wallet_id uuid NOT NULL REFERENCES wallets (id) ON DELETE RESTRICT,
          metric_id uuid NOT NULL REFERENCES usage_metrics (id) ON DELETE RESTRICT,
          project_id uuid NOT NULL REFERENCES projects (id) ON DELETE RESTRICT,
          remainder numeric NOT NULL DEFAULT 0,
          updated_at timestamptz NOT NULL DEFAULT now(),
          CONSTRAINT pk_usage_charge_remainders PRIMARY KEY (wallet_id, metric_id),
          CONSTRAINT ck_usage_charge_remainders_range CHECK (remainder >= 0 AND remainder < 1)
        )
        """
    )

    # Grants: metrics are immutable once defined; events, keys and charges are insert-only;
    # rollups and remainders are updated in place (they are derived state, not history).
    op.execute(rls.grant_sql("usage_metrics", "SELECT, INSERT"))
    op.execute(rls.grant_sql("usage_events", "SELECT, INSERT"))
    op.execute(rls.grant_sql("usage_event_keys", "SELECT, INSERT"))
    op.execute(rls.grant_sql("usage_rollups", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("usage_rollup_values", "SELECT, INSERT"))
    op.execute(rls.grant_sql("usage_charges", "SELECT, INSERT"))
    op.execute(rls.grant_sql("usage_charge_remainders", "SELECT, INSERT, UPDATE"))

    for table in ("usage_events", "usage_charges"):
        for stmt in rls.append_only_sql(table):
            op.execute(stmt)
    for table in (
        "usage_metrics",
        "usage_events",
        "usage_event_keys",
        "usage_rollups",
        "usage_rollup_values",
        "usage_charges",
        "usage_charge_remainders",
    ):
        _tenant(table)

    op.execute(ENSURE_PARTITIONS)
    op.execute("REVOKE ALL ON FUNCTION ledgerx_usage_ensure_partitions(timestamptz, timestamptz) FROM PUBLIC")
    op.execute(rls.grant_sql("FUNCTION ledgerx_usage_ensure_partitions(timestamptz, timestamptz)", "EXECUTE"))
    op.execute(DETACH_PARTITIONS)
    op.execute("REVOKE ALL ON FUNCTION ledgerx_usage_detach_partitions(timestamptz) FROM PUBLIC")
    op.execute(
        f"SELECT ledgerx_usage_ensure_partitions(now() - interval '{MONTHS_BEHIND} months',"
        f" now() + interval '{MONTHS_AHEAD} months')"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ledgerx_usage_detach_partitions(timestamptz)")
    op.execute("DROP FUNCTION IF EXISTS ledgerx_usage_ensure_partitions(timestamptz, timestamptz)")
    for table in (
        "usage_charge_remainders",
        "usage_charges",
        "usage_rollup_values",
        "usage_rollups",
        "usage_event_keys",
        "usage_events",
        "usage_metrics",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
