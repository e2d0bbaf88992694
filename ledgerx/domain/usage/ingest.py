"""Recording usage: one event (optionally charged in the same transaction) or a bulk batch.

Idempotency: an event is stored once per (project, idempotencyKey). Its key row in
`usage_event_keys` (one table across all partitions) is inserted by the same statement that inserts
the event and updates the rollups, so a duplicate (in the batch, in another batch running at the
same time, or stored long ago in any partition) is counted and never stored or rolled up twice.

Bulk path: validate every event in Python (bad ones are rejected alone, with their index), drop
duplicates inside the batch, sort by key, then one statement for the whole batch: first with plain
INSERTs under a savepoint, again with ON CONFLICT DO NOTHING only if a key was already stored
(see `_insert` and store.ingest_sql).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from ledgerx.db.engine import Database
from ledgerx.domain.actor import Actor
from ledgerx.domain.analytics import topics
from ledgerx.domain.errors import BadInput, IdempotencyConflict, NotFound
from ledgerx.domain.events import EventBus
from ledgerx.domain.ledger import LedgerService, WalletRef
from ledgerx.domain.usage import pricing, store, validate
from ledgerx.domain.usage.quotas import QuotaPolicy
from ledgerx.domain.usage.types import (
    BatchResult,
    ChargeResult,
    EventRecord,
    RecordResult,
    Rejection,
    utcnow,
)
from ledgerx.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class IngestConfig:
    late_window: int = 35 * 86400
    future_skew: int = 300
    max_batch: int = 10_000

    @classmethod
    def of(cls, settings: Settings) -> IngestConfig:
        return cls(settings.usage_late_window, settings.usage_future_skew, settings.usage_max_batch)

    def window(self, now: dt.datetime | None) -> validate.Window:
        return validate.Window.at(now or utcnow(), late_window=self.late_window, future_skew=self.future_skew)


async def record_batch(
    db: Database,
    project_id: uuid.UUID,
    events: Any,
    config: IngestConfig,
    *,
    now: dt.datetime | None = None,
    bus: EventBus | None = None,
    quotas: QuotaPolicy | None = None,
) -> BatchResult:
    """recordUsageBatch and POST /v1/usage: store the good events once, reject the bad ones alone.

    With `bus`, a `usage.recorded` event (the count of new events) is published after the commit.
    """
    if type(events) is not list:
        raise BadInput("events must be a list of usage events", field="events")
    if len(events) > config.max_batch:
        raise BadInput(
            f"at most {config.max_batch} events per batch (got {len(events)}); split the batch",
            field="events",
            reason=validate.BATCH_TOO_LARGE,
        )
    window = config.window(now)
    # Validate against the metrics this process knows; a metric it has not seen yet (defined
    # elsewhere, or since) is looked up once and the batch validated again.
    checked = validate.check_batch(events, store.known_metrics(project_id), window)
    missing = {
        events[r.index].get("metricKey") for r in checked.rejected if r.code == NotFound.code and r.field == "metricKey"
    }
    if missing and await store.metrics_by_key(db, project_id, {k for k in missing if isinstance(k, str)}):
        checked = validate.check_batch(events, store.known_metrics(project_id), window)
    good = checked.good
    rejected = tuple(checked.rejected)
    overage = 0
    if quotas is not None and good:
        good, quota_rejections, overage = await _apply_quotas(quotas, project_id, events, good)
        rejected = tuple(sorted((*rejected, *quota_rejections), key=lambda r: r.index))
    if not good:
        return BatchResult(0, checked.duplicates, rejected)
    assert checked.earliest is not None
    assert checked.latest is not None
    await store.ensure_partitions(db, checked.earliest, checked.latest)
    rows = [good[k] for k in sorted(good)]
    fresh = await _insert(db, project_id, rows, one_metric=checked.one_metric, extras=checked.extras)
    if bus is not None and fresh:
        keys = tuple(sorted({r[1].key for r in rows})) if not checked.one_metric else (rows[0][1].key,)
        await bus.publish(*topics.usage_recorded(project_id, count=fresh, metric_keys=keys))
    return BatchResult(fresh, checked.duplicates + len(good) - fresh, rejected, overage)


async def _apply_quotas(
    quotas: QuotaPolicy, project_id: uuid.UUID, events: list[Any], good: dict[str, Any]
) -> tuple[dict[str, Any], list[Rejection], int]:
    """Drop the events a monthly quota refuses (each rejected alone, at its index)."""
    capped = (await quotas.of(project_id)).limits
    if not capped:
        return good, [], 0  # the common case: no quota, no per-event work
    good_capped = {k for k, c in good.items() if c[1].key in capped}
    if not good_capped:
        return good, [], 0
    first_index: dict[str, int] = {}
    for i, e in enumerate(events):
        k = e.get("idempotencyKey") if isinstance(e, dict) else None
        if isinstance(k, str) and k in good_capped and k not in first_index:
            first_index[k] = i
    # Good events are CheckedEvent or plain tuples in its field order: (key, metric, units, occurred_at, …).
    ordered = sorted((first_index[k], c[1], decimal.Decimal(c[2]), c[3]) for k, c in good.items() if k in first_index)
    refused, rejections, overage = await quotas.filter_batch(project_id, ordered)
    if refused:
        good = {k: c for k, c in good.items() if first_index.get(k) not in refused}
    return good, rejections, overage


_SEP = "\x1f"  # joins keys: validated printable, so a key never contains it


def _params(
    project_id: uuid.UUID,
    rows: Sequence[Any],
    wallet_id: uuid.UUID | None,
    *,
    one_metric: bool | None = None,
    extras: bool | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """The shape of the ingestion statement for these rows and its parameters (store.ingest_sql).

    `rows` are CheckedEvent (or tuples in its field order). The per-event columns travel as one
    delimited text each and PostgreSQL splits them (string_to_array): asyncpg encodes a Python
    list element by element with several checks each, which costs more than all the rest of the
    request's Python. `one_metric` / `extras` come from validation when known.
    """
    m0 = rows[0][1]
    if one_metric is None:
        one_metric = all(r[1].id == m0.id for r in rows)
    if extras is None:
        extras = any(r[4] is not None or r[5] is not None for r in rows)
    extras = extras or wallet_id is not None
    params: list[Any] = [
        project_id,
        store.event_ids(len(rows)),
        _SEP.join([r[0] for r in rows]),
        ",".join([r[7] or validate.micros(r[3]) for r in rows]),
        ",".join([r[2] for r in rows]),
        m0.id if one_metric else [r[1].id for r in rows],
    ]
    if extras:
        params += [[r[4] for r in rows], [r[5] for r in rows], [wallet_id] * len(rows)]
    return {"one_metric": one_metric, "extras": extras}, params


async def _insert(db: Database, project_id: uuid.UUID, rows: Sequence[Any], *, one_metric: bool, extras: bool) -> int:
    """Store a batch in one transaction; returns how many events were new.

    Optimistic: the whole batch is inserted with plain INSERTs under a savepoint (the usual case:
    clients retry rarely). If one key was already stored, the unique violation rolls back to the
    savepoint and the batch goes again with ON CONFLICT DO NOTHING, storing only the new events.
    Partitions were ensured by the caller; one that vanished (detached) is created and retried.
    """
    shape, params = _params(project_id, rows, None, one_metric=one_metric, extras=extras)
    for attempt in range(2):
        try:
            async with store.project_tx(db, project_id, savepoint="ingest") as conn:
                try:
                    n = await conn.fetchval(store.ingest_sql(**shape, mode="new"), *params)
                except asyncpg.UniqueViolationError as exc:
                    if exc.constraint_name != "pk_usage_event_keys":
                        raise
                    await conn.execute("ROLLBACK TO SAVEPOINT ingest")
                    n = await conn.fetchval(store.ingest_sql(**shape, mode="dedupe"), *params)
                return int(n)
        except Exception as exc:
            if attempt == 0 and store.is_missing_partition(exc):
                store.forget_partitions(db)
                times = [r[3] for r in rows]
                await store.ensure_partitions(db, min(times), max(times))
                continue
            raise
    raise AssertionError("unreachable")


def event_from_row(r: Any) -> EventRecord:
    props = r["properties"]
    return EventRecord(
        id=r["id"],
        project_id=r["project_id"],
        metric_id=r["metric_id"],
        metric_key=r["metric_key"],
        units=r["units"],
        idempotency_key=r["idempotency_key"],
        occurred_at=r["occurred_at"],
        received_at=r["received_at"],
        wallet_id=r["wallet_id"],
        properties=json.loads(props) if isinstance(props, str) else props,
    )


def _same_event(stored: EventRecord, c: validate.CheckedEvent, wallet_id: uuid.UUID | None) -> bool:
    return (
        stored.metric_id == c.metric.id
        and stored.units == decimal.Decimal(c.units)
        and stored.wallet_id == wallet_id
        and stored.properties == (json.loads(c.properties) if c.properties is not None else None)
        and (not c.explicit_time or stored.occurred_at == c.occurred_at)
    )


async def record_usage(
    db: Database,
    ledger: LedgerService | None,
    actor: Actor,
    project_id: uuid.UUID,
    event: dict[str, Any],
    config: IngestConfig,
    *,
    wallet: WalletRef | None = None,
    now: dt.datetime | None = None,
    bus: EventBus | None = None,
    quotas: QuotaPolicy | None = None,
) -> RecordResult:
    """recordUsage: store one event once per idempotency key; with `wallet`, also charge it.

    Recording and charging happen in one database transaction: both or neither (an
    INSUFFICIENT_FUNDS charge stores no event). The same key again returns the first event (and
    its charge) with `duplicate=True`; the same key with another metric, units, properties, wallet
    or explicit occurredAt is IDEMPOTENCY_CONFLICT.
    """
    window = config.window(now)
    mk = event.get("metricKey")
    metrics = await store.metrics_by_key(db, project_id, [mk] if isinstance(mk, str) else [])
    c = validate.check_event(event, metrics, window)
    if wallet is not None and wallet.project_id != project_id:
        raise NotFound("wallet not found", field="walletId")
    wallet_id = wallet.id if wallet is not None else None
    await store.ensure_partitions(db, c.occurred_at, c.occurred_at)

    charge: ChargeResult | None = None
    overage = False
    async with db.transaction(project_id=project_id) as session:
        conn = await store.driver(session)
        shape, params = _params(project_id, [c], wallet_id)
        row = await conn.fetchrow(store.ingest_sql(**shape, mode="single"), *params)
        if row is not None:
            stored = EventRecord(
                id=row["event_id"],
                project_id=project_id,
                metric_id=c.metric.id,
                metric_key=c.metric.key,
                units=decimal.Decimal(c.units),
                idempotency_key=c.key,
                occurred_at=c.occurred_at,
                received_at=row["received_at"],
                wallet_id=wallet_id,
                properties=json.loads(c.properties) if c.properties is not None else None,
            )
            duplicate = False
            if quotas is not None:
                # Raising here rolls the insert back: a refused event is not stored.
                overage = await quotas.admit_one(project_id, c.metric, decimal.Decimal(c.units), c.occurred_at)
        else:
            found = await conn.fetchrow(store.EVENT_BY_KEY, project_id, c.key)
            assert found is not None, "a duplicate key points at a stored event"
            stored = event_from_row(found)
            if not _same_event(stored, c, wallet_id):
                raise IdempotencyConflict(
                    "this idempotencyKey was already used for another usage event", field="idempotencyKey"
                )
            duplicate = True
        if wallet is not None:
            assert ledger is not None
            req = pricing.ChargeRequest(wallet, c.metric, stored.units, c.key, stored.id)
            [(record, replayed)] = await pricing.charge_in_session(session, ledger, actor, project_id, [req])
            charge = ChargeResult(record, None, replayed)
    if charge is not None and ledger is not None:
        charge = dataclasses.replace(charge, transaction=await pricing.transaction_of(ledger, charge.charge))
    if bus is not None and not duplicate:
        await bus.publish(*topics.usage_recorded(project_id, count=1, metric_keys=(c.metric.key,)))
    return RecordResult(stored, duplicate, charge, overage)


async def get_event(db: Database, project_id: uuid.UUID, idempotency_key: str) -> EventRecord | None:
    async with store.project_tx(db, project_id) as conn:
        row = await conn.fetchrow(store.EVENT_BY_KEY, project_id, idempotency_key)
    return event_from_row(row) if row is not None else None


__all__ = ["IngestConfig", "get_event", "record_batch", "record_usage"]
