"""Recording usage: one event (optionally charged in the same transaction) or a bulk batch.

Idempotency: an event is stored once per (project, idempotencyKey). Its key row in
`usage_event_keys` (one table across all partitions) is inserted by the same statement that inserts
the event and updates the rollups, so a duplicate (in the batch, in another batch running at the
same time, or stored long ago in any partition) is counted and never stored or rolled up twice.

Bulk path: validate every event in Python (bad ones are rejected alone, with their index), drop
duplicates inside the batch, sort by key, then one statement for the whole batch with ON CONFLICT
DO NOTHING on the keys (see `_insert` and store.ingest_sql): a key already stored is a normal
outcome, counted as a duplicate, never a database error. Events of a metric with a monthly quota
are decided in the same transaction, under the quota's lock (quotas.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from ledgerx.db.engine import Database, driver
from ledgerx.domain import topics
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, IdempotencyConflict, NotFound
from ledgerx.domain.events import EventBus
from ledgerx.domain.ledger import LedgerService, WalletRef
from ledgerx.domain.usage import pricing, store, validate
from ledgerx.domain.usage.quotas import Admission, Candidate, QuotaPolicy, slots_of
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
    if not good:
        return BatchResult(0, checked.duplicates, rejected)
    assert checked.earliest is not None
    assert checked.latest is not None
    rows = [good[k] for k in sorted(good)]
    gate = await _quota_gate(quotas, project_id, events, rows)
    await store.ensure_partitions(db, checked.earliest, checked.latest)
    fresh, stored, refusals, admission = await _insert(
        db, project_id, rows, one_metric=checked.one_metric, extras=checked.extras, gate=gate
    )
    overage = admission.overage
    if quotas is not None:
        await quotas.announce(project_id, admission)
    if refusals:
        rejected = tuple(sorted((*rejected, *refusals), key=lambda r: r.index))
    if bus is not None and fresh:
        keys = tuple(sorted({r[1].key for r in stored})) if not checked.one_metric else (stored[0][1].key,)
        await bus.publish(*topics.usage_recorded(project_id, count=fresh, metric_keys=keys))
    return BatchResult(fresh, checked.duplicates + len(stored) - fresh, rejected, overage)


Gate = Callable[[asyncpg.Connection], Awaitable[tuple[set[str], list[Rejection], Admission]]]


async def _quota_gate(
    quotas: QuotaPolicy | None, project_id: uuid.UUID, events: list[Any], rows: Sequence[Any]
) -> Gate | None:
    """What the batch's transaction runs before its insert when a monthly quota caps some of its
    events (None otherwise: the common case pays nothing): QuotaPolicy.reserve_batch."""
    if quotas is None:
        return None
    q = await quotas.of(project_id)
    if not q.limits or not any(quotas.capped(q, r[1]) for r in rows):
        return None
    first_index: dict[str, int] = {}
    for i, e in enumerate(events):
        k = e.get("idempotencyKey") if isinstance(e, dict) else None
        if isinstance(k, str) and k not in first_index:
            first_index[k] = i
    # Rows are CheckedEvent or plain tuples in its field order: (key, metric, units, occurred_at, …).
    candidates = [Candidate(first_index[r[0]], r[0], r[1], decimal.Decimal(r[2]), r[3]) for r in rows]

    async def gate(conn: asyncpg.Connection) -> tuple[set[str], list[Rejection], Admission]:
        return await quotas.reserve_batch(conn, project_id, q, candidates)

    return gate


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


async def _insert(
    db: Database,
    project_id: uuid.UUID,
    rows: Sequence[Any],
    *,
    one_metric: bool,
    extras: bool,
    gate: Gate | None = None,
) -> tuple[int, Sequence[Any], list[Rejection], Admission]:
    """Store a batch in one transaction with ON CONFLICT DO NOTHING on the keys, so a key already
    stored (a retry, a concurrent batch) is skipped, never a database error. `gate` runs first in
    the same transaction and names the keys a quota refuses. Returns (how many events were new, the
    rows offered to the insert, the quota's rejections, its admission: overage, limits reached).

    Partitions were ensured by the caller; one that vanished (detached) is created and retried.
    """
    for attempt in range(2):
        try:
            async with db.raw(project_id=project_id) as conn:
                offered: Sequence[Any] = rows
                refusals: list[Rejection] = []
                admission = Admission()
                if gate is not None:
                    refused, refusals, admission = await gate(conn)
                    offered = [r for r in rows if r[0] not in refused] if refused else rows
                if not offered:
                    return 0, offered, refusals, admission
                one = one_metric if len(offered) == len(rows) else None
                shape, params = _params(project_id, offered, None, one_metric=one, extras=extras)
                n = await conn.fetchval(store.ingest_sql(**shape, mode="dedupe"), *params)
                return int(n), offered, refusals, admission
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
    admission = Admission()
    # The project's quotas when one caps this event's metric, else None (no lock, no check).
    q = await quotas.of(project_id) if quotas is not None else None
    if quotas is not None and q is not None and not quotas.capped(q, c.metric):
        q = None
    # A refusal rolls the transaction back; the quota's crossing is recorded after it.
    refusal = quotas.noting_refusal(project_id, q, c.metric, c.occurred_at) if quotas else contextlib.nullcontext()
    async with refusal, db.transaction(project_id=project_id) as session:
        conn = await driver(session)
        if q is not None:
            # Held to the commit: writers of this metric's periods take turns (see quotas.py).
            await QuotaPolicy.lock(conn, project_id, [slot for slot, _ in slots_of(q, c.metric, c.occurred_at)])
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
            if quotas is not None and q is not None:
                # Reads the periods with this event in them; raising rolls the insert back.
                admission = await quotas.admit_stored(conn, q, c.metric, decimal.Decimal(c.units), c.occurred_at)
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
    if quotas is not None:
        await quotas.announce(project_id, admission)
    if charge is not None and ledger is not None:
        charge = dataclasses.replace(charge, transaction=await pricing.transaction_of(ledger, charge.charge))
    if bus is not None and not duplicate:
        await bus.publish(*topics.usage_recorded(project_id, count=1, metric_keys=(c.metric.key,)))
    return RecordResult(stored, duplicate, charge, admission.overage > 0)


async def get_event(db: Database, project_id: uuid.UUID, idempotency_key: str) -> EventRecord | None:
    async with db.raw(project_id=project_id) as conn:
        row = await conn.fetchrow(store.EVENT_BY_KEY, project_id, idempotency_key)
    return event_from_row(row) if row is not None else None


__all__ = ["IngestConfig", "get_event", "record_batch", "record_usage"]
