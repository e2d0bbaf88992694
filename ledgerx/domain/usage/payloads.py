"""Usage's outbound webhook `data`: the field names of the GraphQL type `Quota` (a plan's monthly
quota of one metric), values written as the API writes them (domain/scalars.py).
tests/test_webhook_events.py checks every key against the schema and every value against a query.
"""

from __future__ import annotations

from typing import Any

from ledgerx.domain.scalars import bigint_text


def quota(metric_key: str, limit: int) -> dict[str, Any]:
    """GraphQL `Quota` (the `usage.quota_exceeded` event): the metric and its monthly limit."""
    return {"metric": metric_key, "limit": bigint_text(limit)}
