"""Metrics: what a project meters, how its events aggregate, and the price of one unit."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.dialects.postgresql import insert

from ledgerx.db.engine import Database
from ledgerx.db.models import UsageMetric
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, Conflict, NotFound
from ledgerx.domain.usage import store, validate
from ledgerx.domain.usage.types import Aggregation, MetricRecord
from ledgerx.ids import encode, uuid7

PROPERTY_NAME_MAX = 128
LIST_MAX = 500


async def define_metric(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    *,
    key: str,
    name: str,
    aggregation: Aggregation | str,
    unit_price: Any,
    unique_property: str | None = None,
) -> MetricRecord:
    """Define a metric; its key is unique in the project (CONFLICT otherwise). Audited."""
    key = validate.metric_key(key)
    name = (name or "").strip()
    if not 1 <= len(name) <= 200:
        raise BadInput("name must be 1 to 200 characters", field="name")
    try:
        agg = Aggregation(aggregation)
    except ValueError:
        raise BadInput("aggregation must be SUM, COUNT, MAX or UNIQUE", field="aggregation") from None
    price = validate.unit_price(unit_price)
    prop: str | None = None
    if agg is Aggregation.UNIQUE:
        prop = (unique_property or "").strip()
        if not prop or len(prop) > PROPERTY_NAME_MAX or not prop.isprintable():
            raise BadInput(
                "a UNIQUE metric counts distinct values of one event property: give its name (uniqueProperty)",
                field="uniqueProperty",
            )
    elif unique_property is not None:
        raise BadInput("uniqueProperty is only for UNIQUE metrics", field="uniqueProperty")

    metric_id = uuid7()
    async with db.transaction(project_id=project_id) as session:
        # ON CONFLICT: a key already defined is the caller's mistake (CONFLICT), not a database error.
        row = (
            await session.execute(
                insert(UsageMetric)
                .values(
                    id=metric_id,
                    project_id=project_id,
                    key=key,
                    name=name,
                    aggregation=agg.value,
                    unique_property=prop,
                    unit_price=price,
                    created_by=actor.id if actor.type == "user" else None,
                )
                .on_conflict_do_nothing(constraint="uq_usage_metrics_project_key")
                .returning(UsageMetric.created_at)
            )
        ).one_or_none()
        if row is None:
            raise Conflict(f"a metric with the key {key!r} already exists in this project", field="key")
        metric = MetricRecord(metric_id, project_id, key, name, agg, prop, price, row.created_at)
        await audit.record(
            session,
            actor,
            "usage.metric.define",
            project_id=project_id,
            target_type="metric",
            target_id=encode("metric", metric_id),
            after=audit_json(metric),
        )
    store.remember_metric(metric)
    return metric


def audit_json(m: MetricRecord) -> dict[str, Any]:
    return {
        "key": m.key,
        "name": m.name,
        "aggregation": m.aggregation.value,
        "uniqueProperty": m.unique_property,
        "unitPrice": format(m.unit_price, "f"),
    }


async def get_metric(db: Database, project_id: uuid.UUID, key: str, field: str = "metricKey") -> MetricRecord:
    if not isinstance(key, str) or not validate.METRIC_KEY.match(key):
        raise NotFound(f"no metric {key!r} in this project", field=field)
    found = await store.metrics_by_key(db, project_id, [key])
    metric = found.get(key)
    if metric is None:
        raise NotFound(f"no metric {key!r} in this project", field=field)
    return metric


async def list_metrics(db: Database, project_id: uuid.UUID) -> list[MetricRecord]:
    async with db.raw(project_id=project_id) as conn:
        rows = await conn.fetch(
            f"SELECT {store.METRIC_COLS} FROM usage_metrics WHERE project_id = $1 ORDER BY key LIMIT $2",  # noqa: S608
            project_id,
            LIST_MAX,
        )
    return [store.metric_from_row(r) for r in rows]
