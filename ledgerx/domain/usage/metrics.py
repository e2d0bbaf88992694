"""Metrics: what a project meters, how its events aggregate, and how its units are priced.

A metric is priced by `unitPrice` (PER_UNIT) or by a `pricing` model (price_models.py). Its key and
aggregation never change; `updateMetric` renames it or reprices it, and a new price applies from
the next period (price_versions.py): the running period keeps the price it started with.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.dialects.postgresql import insert

from ledgerx.db.engine import Database, driver
from ledgerx.db.models import UsageMetric
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, Conflict, NotFound
from ledgerx.domain.usage import periods, price_models, price_versions, store, validate
from ledgerx.domain.usage.price_models import Pricing
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
    pricing: Mapping[str, Any] | None = None,
) -> MetricRecord:
    """Define a metric; its key is unique in the project (CONFLICT otherwise). Audited."""
    key = validate.metric_key(key)
    name = _name(name)
    try:
        agg = Aggregation(aggregation)
    except ValueError:
        raise BadInput("aggregation must be SUM, COUNT, MAX or UNIQUE", field="aggregation") from None
    model = _pricing(unit_price, pricing, required=True)
    assert model is not None
    price = model.first_unit_price()
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
                    pricing=_stored_json(model),
                    created_by=actor.id if actor.type == "user" else None,
                )
                .on_conflict_do_nothing(constraint="uq_usage_metrics_project_key")
                .returning(UsageMetric.created_at)
            )
        ).one_or_none()
        if row is None:
            raise Conflict(f"a metric with the key {key!r} already exists in this project", field="key")
        metric = MetricRecord(metric_id, project_id, key, name, agg, prop, price, row.created_at, model)
        await price_versions.add(await driver(session), project_id, metric_id, model, None)
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


def _name(name: Any) -> str:
    clean = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(clean) <= 200:
        raise BadInput("name must be 1 to 200 characters", field="name")
    return clean


def _pricing(unit_price: Any, pricing: Mapping[str, Any] | None, *, required: bool) -> Pricing | None:
    """The metric's pricing from `unitPrice` (PER_UNIT) or `pricing` (one of them, not both)."""
    if unit_price is not None and pricing is not None:
        raise BadInput("give unitPrice or pricing, not both", field="pricing")
    if pricing is not None:
        return price_models.parse(pricing)
    if unit_price is not None:
        return Pricing.per_unit(validate.unit_price(unit_price))
    if required:
        raise BadInput("a metric needs a price: unitPrice, or a pricing model", field="unitPrice")
    return None


def _stored_json(p: Pricing) -> dict[str, Any] | None:
    """What `usage_metrics.pricing` holds: NULL for a plain unit price (as before pricing models)."""
    return None if p == Pricing.per_unit(p.first_unit_price()) else p.to_json()


async def update_metric(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    key: str,
    *,
    name: str | None = None,
    unit_price: Any = None,
    pricing: Mapping[str, Any] | None = None,
) -> MetricRecord:
    """updateMetric: rename the metric now, and/or reprice it from the next period (a new price
    version from the project's now: the running period keeps its price). Audited."""
    new_name = _name(name) if name is not None else None
    model = _pricing(unit_price, pricing, required=False)
    if new_name is None and model is None:
        raise BadInput("nothing to change: give name, unitPrice or pricing", field="name")
    async with db.transaction(project_id=project_id) as session:
        conn = await driver(session)
        before = await periods.metric_by_key(conn, project_id, key if isinstance(key, str) else "", lock=True)
        if before is None:
            raise NotFound(f"no metric {key!r} in this project", field="key")
        after = dataclasses.replace(
            before,
            name=new_name if new_name is not None else before.name,
            pricing=model if model is not None else before.pricing,
            unit_price=model.first_unit_price() if model is not None else before.unit_price,
        )
        if after == before:
            return before
        await conn.execute(
            "UPDATE usage_metrics SET name = $2, unit_price = $3, pricing = $4::jsonb, updated_at = now()"
            " WHERE id = $1",
            before.id,
            after.name,
            after.unit_price,
            json.dumps(j) if (j := _stored_json(after.pricing)) is not None else None,
        )
        if model is not None and model != before.pricing:
            await price_versions.add(
                conn, project_id, before.id, model, await price_versions.project_now(conn, project_id)
            )
        await audit.record(
            session,
            actor,
            "usage.metric.update",
            project_id=project_id,
            target_type="metric",
            target_id=encode("metric", before.id),
            before=audit_json(before),
            after=audit_json(after),
        )
    store.remember_metric(after)
    return after


async def read_metric(db: Database, project_id: uuid.UUID, key: str, field: str = "key") -> MetricRecord:
    """The metric as stored now (its name and latest pricing), for answers; not the cache."""
    if not isinstance(key, str) or not validate.METRIC_KEY.match(key):
        raise NotFound(f"no metric {key!r} in this project", field=field)
    async with db.raw(project_id=project_id) as conn:
        metric = await periods.metric_by_key(conn, project_id, key)
    if metric is None:
        raise NotFound(f"no metric {key!r} in this project", field=field)
    return metric


def audit_json(m: MetricRecord) -> dict[str, Any]:
    return {
        "key": m.key,
        "name": m.name,
        "aggregation": m.aggregation.value,
        "uniqueProperty": m.unique_property,
        "unitPrice": format(m.unit_price, "f"),
        "pricing": m.pricing.to_json(),
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
