"""Usage metering: metrics, idempotent event ingestion (single and bulk), rollups and summaries,
and pricing usage into ledger debits with the sub-unit remainder carried per wallet and metric.

Entry points:
- `metrics.define_metric / get_metric / list_metrics`;
- `ingest.record_usage` (one event, optionally charged in the same transaction) and
  `ingest.record_batch` (bulk: recordUsageBatch and POST /v1/usage);
- `pricing.charge_usage` / `pricing.charge_usage_batch` (through the ledger's `post_transaction`);
- `carry` (the sub-unit remainder per wallet and metric, and the one lock order of a usage charge:
  carry rows, then wallets) and `periods.units` (usage over any [start, end) windows: billing periods);
- `summary.usage_summary` (from rollups, in any time zone) and `summary.monthly_total` (quotas);
- `partitions.maintain` (create months ahead; detach after retention — see docs/usage.md).
"""
