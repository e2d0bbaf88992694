"""The webhook inbox: verified Stripe events stored once by id, claimed with SKIP LOCKED and a
lease, processed, retried with backoff, every attempt recorded.

Statuses: PENDING (waiting), PROCESSING (claimed; the lease `locked_until` lets another worker take
it over if this one dies), PROCESSED, FAILED (will retry at `next_attempt_at`), DEAD (gave up after
`webhook_max_attempts`, or at the first attempt when the failure is permanent (`classify`: the
event names what LedgerX does not have, or data the database refuses); a platform admin can
replay it), IGNORED (not a type or object LedgerX acts
on; stored and acknowledged all the same).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ledgerx import ids
from ledgerx.db.models import WebhookAttempt, WebhookEvent
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError, BadInput, Conflict, IdempotencyConflict, NotFound
from ledgerx.domain.payments import event_json, objects, records
from ledgerx.domain.payments.handlers import dispatch
from ledgerx.domain.payments.handlers.event import EPOCH, NotReady, Outcome, Permanent
from ledgerx.domain.payments.records import WebhookAttemptRecord, WebhookEventRecord
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.payments.inbox")

STATUSES = ("PENDING", "PROCESSING", "PROCESSED", "FAILED", "DEAD", "IGNORED")
WORKER = f"{socket.gethostname()}:{uuid7().hex[-8:]}"


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    event: WebhookEventRecord
    created: bool  # False: the event id was already in the inbox


async def store(svc: PaymentsService, payload: Mapping[str, Any], *, source: str = "WEBHOOK") -> Stored:
    """Insert the event once by its Stripe id (a redelivery finds the first row). The payload is
    stored as `event_json.clean` makes it (raises `event_json.Refused` for what cannot be stored)."""
    payload = event_json.clean(dict(payload))
    event_id = str(payload["id"])
    event_type = str(payload.get("type") or "")
    known = dispatch.handles(event_type)
    async with svc.db.transaction(system=True) as s:
        new_id = (
            await s.execute(
                pg_insert(WebhookEvent)
                .values(
                    id=uuid7(),
                    stripe_event_id=event_id,
                    type=event_type,
                    created=objects.ts(payload.get("created")) or EPOCH,
                    livemode=bool(payload.get("livemode")),
                    api_version=str(payload.get("api_version") or "") or None,
                    payload=payload,
                    source=source,
                    status="PENDING" if known else "IGNORED",
                    result=None if known else f"ignored: {event_type} is not handled",
                    processed_at=None if known else func.now(),
                )
                .on_conflict_do_nothing(index_elements=["stripe_event_id"])
                .returning(WebhookEvent.id)
            )
        ).scalar()
        row = (await s.execute(select(WebhookEvent).where(WebhookEvent.stripe_event_id == event_id))).scalar_one()
    return Stored(records.of(WebhookEventRecord, row), new_id is not None)


async def claim(svc: PaymentsService, limit: int) -> list[WebhookEventRecord]:
    """Take up to `limit` due events (oldest Stripe time first) under a lease; SKIP LOCKED keeps
    concurrent workers on different rows."""
    lease = dt.timedelta(seconds=svc.settings.webhook_lease_seconds)
    async with svc.db.transaction(system=True) as s:
        due = (
            select(WebhookEvent.id)
            .where(
                ((WebhookEvent.status.in_(("PENDING", "FAILED"))) & (WebhookEvent.next_attempt_at <= func.now()))
                | ((WebhookEvent.status == "PROCESSING") & (WebhookEvent.locked_until < func.now()))
            )
            .order_by(WebhookEvent.created, WebhookEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (
            await s.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id.in_(due.scalar_subquery()))
                .values(status="PROCESSING", locked_until=func.now() + lease, attempts=WebhookEvent.attempts + 1)
                .returning(WebhookEvent)
            )
        ).scalars()
        claimed = [records.of(WebhookEventRecord, r) for r in rows]
    return sorted(claimed, key=lambda r: (r.created, r.id))


def backoff(settings_base: float, settings_max: float, attempts: int) -> float:
    base: float = min(settings_base * 2.0 ** max(attempts - 1, 0), settings_max)
    return base * random.uniform(0.8, 1.2)


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt failed, as stored in `last_error` (a readable summary, never SQL), and
    whether trying again can help."""

    message: str
    permanent: bool


# SQLSTATE classes of the data itself (22 data exception, 23 integrity violation) and of statements
# that cannot work (42 syntax or access rule): the same event fails the same way every time.
# Everything else (08 connection, 40 serialization/deadlock, 53 resources, 55 lock not available,
# 57 shutdown or statement timeout) may pass on a later attempt.
_PERMANENT_SQLSTATE = ("22", "23", "42")
# Python errors that mean the payload does not have the shape the handler relies on.
_PERMANENT_TYPES = (LookupError, TypeError, ValueError, ArithmeticError, AttributeError)
_MAX_ERROR = 500


def _readable(text_: str) -> str:
    """The first line of a message, without SQLAlchemy's statement, parameters and doc link."""
    for cut in ("\n", "[SQL:", "[parameters:", "(Background on this error"):
        text_ = text_.split(cut, 1)[0]
    return text_.strip()[:_MAX_ERROR]


def classify(exc: BaseException) -> Failure:
    """Permanent (bad data: fail now, no retries) or transient (database, network, not yet)."""
    if isinstance(exc, NotReady):
        return Failure(f"not ready: {exc}", permanent=False)
    if isinstance(exc, Permanent):
        return Failure(str(exc)[:_MAX_ERROR], permanent=True)
    if isinstance(exc, AppError):
        # Refusals of the data (unknown ids, bad values, a reused key) stay refusals; a conflict,
        # missing funds or a provider failure may clear.
        return Failure(
            f"{exc.code}: {exc.message}"[:_MAX_ERROR],
            permanent=isinstance(exc, BadInput | NotFound | IdempotencyConflict),
        )
    if isinstance(exc, sa_exc.DBAPIError | asyncpg.PostgresError):
        # SQLAlchemy wraps the driver's error, whose message and detail name no statement.
        orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
        driver = orig.__cause__ if orig is not None and orig.__cause__ is not None else orig
        state = str(getattr(orig, "sqlstate", None) or getattr(driver, "sqlstate", None) or "")
        message = str(getattr(driver, "message", None) or "") or _readable(str(driver or exc)).split(">: ", 1)[-1]
        detail = getattr(driver, "detail", None)
        summary = f"database error{f' {state}' if state else ''}: {_readable(message)}"
        if detail:
            summary += f" ({_readable(str(detail))})"
        return Failure(summary[:_MAX_ERROR], permanent=state[:2] in _PERMANENT_SQLSTATE)
    if isinstance(exc, sa_exc.SQLAlchemyError | OSError | TimeoutError):
        return Failure(f"{type(exc).__name__}: {_readable(str(exc))}"[:_MAX_ERROR], permanent=False)
    return Failure(
        f"{type(exc).__name__}: {_readable(str(exc))}"[:_MAX_ERROR], permanent=isinstance(exc, _PERMANENT_TYPES)
    )


async def process(svc: PaymentsService, row: WebhookEventRecord, *, trigger: str = "WORKER") -> WebhookEventRecord:
    """Run the event's handler and record the attempt; the row must be claimed (PROCESSING).

    A failure is retried with backoff while it may pass (`classify`); a permanent one (the event's
    data can never apply) goes to DEAD at once, where a platform admin sees it and can replay it."""
    started = dt.datetime.now(dt.UTC)
    outcome: Outcome | None = None
    failure: Failure | None = None
    try:
        outcome = await dispatch.handle(svc, row.payload)
    except Exception as exc:
        failure = classify(exc)
        if isinstance(exc, NotReady | AppError | Permanent):
            log.warning("stripe event %s (%s) failed: %s", row.stripe_event_id, row.type, failure.message)
        else:
            log.exception("stripe event %s (%s) failed", row.stripe_event_id, row.type)
    error = failure.message if failure is not None else None
    s_ = svc.settings
    values: dict[str, Any] = {"locked_until": None}
    if outcome is not None:
        values.update(
            status="IGNORED" if outcome.ignored else "PROCESSED",
            result=outcome.result[:2000],
            last_error=None,
            processed_at=func.now(),
        )
        if outcome.project_id is not None:
            values["project_id"] = outcome.project_id
    else:
        dead = (failure is not None and failure.permanent) or row.attempts >= s_.webhook_max_attempts
        values.update(
            status="DEAD" if dead else "FAILED",
            last_error=error,
            next_attempt_at=func.now()
            + dt.timedelta(seconds=backoff(s_.webhook_retry_base, s_.webhook_retry_max, row.attempts)),
        )
    async with svc.db.transaction(system=True) as s:
        updated = (
            await s.execute(
                update(WebhookEvent).where(WebhookEvent.id == row.id).values(**values).returning(WebhookEvent)
            )
        ).scalar_one()
        s.add(
            WebhookAttempt(
                id=uuid7(),
                event_id=row.id,
                attempt=row.attempts,
                trigger=trigger,
                ok=outcome is not None,
                result=outcome.result[:2000] if outcome is not None else None,
                error=error,
                started_at=started,
            )
        )
    return records.of(WebhookEventRecord, updated)


async def run_once(svc: PaymentsService, limit: int | None = None) -> int:
    """Claim and process one batch; returns how many events were claimed."""
    rows = await claim(svc, limit or svc.settings.webhook_batch_size)
    for row in rows:
        await process(svc, row)
    return len(rows)


async def drain(svc: PaymentsService, *, max_rounds: int = 1000) -> int:
    """Process until nothing is due (tests and the CLI)."""
    total = 0
    for _ in range(max_rounds):
        n = await run_once(svc)
        if n == 0:
            break
        total += n
    return total


async def next_due_in(svc: PaymentsService) -> float | None:
    async with svc.db.transaction(system=True) as s:
        row = (
            await s.execute(
                text(
                    "SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM webhook_events"
                    " WHERE status IN ('PENDING', 'FAILED')"
                )
            )
        ).scalar()
    return float(row) if row is not None else None


async def claim_one(svc: PaymentsService, event_id: uuid.UUID) -> WebhookEventRecord:
    """Claim one event whatever its status, unless another worker holds a live lease on it."""
    lease = dt.timedelta(seconds=svc.settings.webhook_lease_seconds)
    async with svc.db.transaction(system=True) as s:
        row = (
            await s.execute(
                update(WebhookEvent)
                .where(
                    WebhookEvent.id == event_id,
                    ~((WebhookEvent.status == "PROCESSING") & (WebhookEvent.locked_until > func.now())),
                )
                .values(status="PROCESSING", locked_until=func.now() + lease, attempts=WebhookEvent.attempts + 1)
                .returning(WebhookEvent)
            )
        ).scalar()
        if row is None:
            exists = await s.scalar(select(WebhookEvent.id).where(WebhookEvent.id == event_id))
            if exists is None:
                raise NotFound("webhook event not found", field="id")
            raise Conflict("the event is being processed right now; try again shortly", field="id")
    return records.of(WebhookEventRecord, row)


async def replay(svc: PaymentsService, actor: Actor, event_id: uuid.UUID) -> WebhookEventRecord:
    """Process an event again now (any status). The books never change twice: every posting is
    keyed by Stripe ids and every state row only moves forward."""
    async with svc.db.transaction(system=True) as s:
        before = await s.get(WebhookEvent, event_id)
        previous = {"status": before.status, "attempts": before.attempts} if before is not None else None
    row = await claim_one(svc, event_id)
    done = await process(svc, row, trigger="REPLAY")
    async with svc.db.transaction(system=True) as s:
        await audit.record(
            s,
            actor,
            "webhook.replay",
            project_id=done.project_id,
            target_type="webhook_event",
            target_id=ids.encode("webhook_event", done.id),
            before=previous,
            after={"status": done.status, "attempts": done.attempts, "result": done.result, "error": done.last_error},
        )
    return done


async def get(svc: PaymentsService, event_id: uuid.UUID) -> WebhookEventRecord:
    async with svc.db.transaction(system=True) as s:
        row = await s.get(WebhookEvent, event_id)
    if row is None:
        raise NotFound("webhook event not found", field="id")
    return records.of(WebhookEventRecord, row)


async def list_events(
    svc: PaymentsService, *, status: str | None, event_type: str | None, limit: int, before: uuid.UUID | None
) -> list[WebhookEventRecord]:
    """Newest first; `limit + 1` rows so the caller knows more exist."""
    async with svc.db.transaction(system=True) as s:
        q = select(WebhookEvent).order_by(WebhookEvent.id.desc()).limit(limit + 1)
        if status is not None:
            q = q.where(WebhookEvent.status == status)
        if event_type is not None:
            q = q.where(WebhookEvent.type == event_type)
        if before is not None:
            q = q.where(WebhookEvent.id < before)
        return [records.of(WebhookEventRecord, e) for e in (await s.execute(q)).scalars()]


async def attempts_of(svc: PaymentsService, event_id: uuid.UUID) -> list[WebhookAttemptRecord]:
    async with svc.db.transaction(system=True) as s:
        q = select(WebhookAttempt).where(WebhookAttempt.event_id == event_id).order_by(WebhookAttempt.id)
        return [records.of(WebhookAttemptRecord, a) for a in (await s.execute(q)).scalars()]


async def attempts_of_many(
    svc: PaymentsService, event_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[WebhookAttemptRecord]]:
    """`attempts_of` of each event, in one statement, by event id."""
    found: dict[uuid.UUID, list[WebhookAttemptRecord]] = {e: [] for e in event_ids}
    async with svc.db.transaction(system=True) as s:
        q = select(WebhookAttempt).where(WebhookAttempt.event_id.in_(list(event_ids))).order_by(WebhookAttempt.id)
        for a in (await s.execute(q)).scalars():
            found[a.event_id].append(records.of(WebhookAttemptRecord, a))
    return found
