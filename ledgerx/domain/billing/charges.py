"""What a batch of runs charges: flat amounts and usage priced with the carry (usage/carry.py), and
the debits posted through the ledger's `post_many` on the batch's transaction.

Lock order (carry.py's): the carry rows of the batch's usage runs are locked by `price`, before
`charge` posts the debits (which lock the wallets); the carries are saved with the runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any

import asyncpg

from ledgerx.domain.actor import Actor
from ledgerx.domain.billing import grace
from ledgerx.domain.billing.records import AMOUNT_MODES, USAGE_MODES, Rule, Run, period_label
from ledgerx.domain.billing.service import BillingService
from ledgerx.domain.errors import AppError, InsufficientFunds
from ledgerx.domain.ledger.posting import post_many
from ledgerx.domain.ledger.types import MAX_BIGINT, Kind, Leg, Posting, SystemAccount
from ledgerx.domain.usage import carry, periods, price_versions
from ledgerx.domain.usage.price_models import Pricing
from ledgerx.domain.usage.types import MetricRecord


@dataclasses.dataclass(slots=True)
class Attempt:
    """A run to attempt now: a new one (`new`) or a retry of an unpaid one."""

    rule: Rule
    run: Run
    new: bool
    failure: str | None = None  # refused before posting (e.g. an amount out of range)


def period_pricing(rule_unit_price: decimal.Decimal | None, metric_pricing: Pricing) -> Pricing:
    """How a rule prices its period's units: its own unitPrice (PER_UNIT), else the metric's pricing
    in effect at the period's start."""
    return Pricing.per_unit(rule_unit_price) if rule_unit_price is not None else metric_pricing


async def price(conn: asyncpg.Connection, attempts: list[Attempt]) -> carry.Carries:
    """Amounts of new runs; usage runs lock and move their wallet+metric carry (saved by the
    caller once the debits are posted: carry.py's lock order)."""
    usage = [a for a in attempts if a.new and a.rule.mode in USAGE_MODES and a.rule.metric_id is not None]
    units: list[decimal.Decimal] = []
    versions: list[Pricing | None] = []
    infos: dict[uuid.UUID, MetricRecord] = {}
    carries = carry.Carries({})
    if usage:
        infos = await periods.metrics_by_id(conn, [a.rule.metric_id for a in usage if a.rule.metric_id is not None])
        windows = []
        for a in usage:
            assert a.rule.metric_id is not None
            windows.append(
                periods.Window(a.rule.project_id, infos[a.rule.metric_id], a.run.period_start, a.run.period_end)
            )
        units = await periods.units(conn, windows)
        # The pricing in effect at each period's start: a change applies from the next period.
        versions = await price_versions.at(conn, [(w.metric.id, w.start) for w in windows])
        carries = await carry.Carries.lock(
            conn, [(a.rule.wallet_id, a.rule.metric_id, a.rule.project_id) for a in usage if a.rule.metric_id]
        )
    u = iter(zip(units, versions, strict=True))
    is_usage = {id(a) for a in usage}
    for a in attempts:
        if not a.new:
            continue
        base = a.rule.amount if a.rule.mode in AMOUNT_MODES else None
        amount = base or 0
        if id(a) in is_usage:
            assert a.rule.metric_id is not None
            info = infos[a.rule.metric_id]
            n, version = next(u)
            pricing = period_pricing(a.rule.unit_price, version or info.pricing)
            before = carries.remainder(a.rule.wallet_id, info.id)
            a.run.units, a.run.unit_price = n, pricing.flat_unit_price()
            try:
                priced = carries.price_exact(a.rule.wallet_id, info.id, pricing.price(n))
            except AppError as exc:
                a.failure = exc.message
                continue
            amount += priced.amount
            a.run.remainder_before, a.run.remainder_after = before, priced.remainder
        a.run.base_amount = base
        a.run.amount = amount
    return carries


async def charge(
    svc: BillingService,
    conn: asyncpg.Connection,
    attempts: list[Attempt],
    actor: Actor,
    now: dt.datetime,
    *,
    sweep: bool,
) -> list[tuple[str, dict[str, Any]]]:
    """Post every debit of the batch in one `post_many` on `conn` and set each run's outcome
    (a shortfall is retried per `grace.next_retry`). Returns the ledger's events, to publish
    after the commit."""
    events: list[tuple[str, dict[str, Any]]] = []
    to_post: list[Attempt] = []
    for a in attempts:
        a.run.attempts += 1
        a.run.last_attempt_at = a.run.scheduled_at if sweep and a.new else now
        if a.failure is None and a.run.amount > MAX_BIGINT:
            a.failure = "the amount is out of range"
        if a.failure is not None:
            a.run.status, a.run.error = "FAILED", a.failure
            continue
        if a.run.amount == 0:
            a.run.status = "SUCCEEDED"
            continue
        to_post.append(a)
    if to_post:
        posted = await post_many(svc.ledger, [debit(a, actor) for a in to_post], conn=conn)
        events.extend(posted.events)
        for a, outcome in zip(to_post, posted.outcomes, strict=True):
            run = a.run
            if isinstance(outcome, InsufficientFunds):
                run.status, run.error = "INSUFFICIENT_FUNDS", outcome.message
                run.next_retry_at = grace.next_retry(svc.policy, run.attempts, now)
            elif isinstance(outcome, AppError):
                run.status, run.error, run.next_retry_at = "FAILED", outcome.message, None
            else:
                run.status, run.error, run.next_retry_at = "SUCCEEDED", None, None
                run.transaction_id = outcome.transaction.id
    return events


def debit(a: Attempt, actor: Actor) -> Posting:
    run, rule = a.run, a.rule
    period = period_label(run.scheduled_at)
    return Posting(
        project_id=rule.project_id,
        wallet_id=rule.wallet_id,
        kind=Kind.BILLING,
        currency=rule.currency,
        legs=(Leg(-run.amount, wallet_id=rule.wallet_id), Leg(run.amount, system=SystemAccount.BILLING_REVENUE)),
        idempotency_key=run.idempotency_key,
        actor=actor,
        reference=run.public_id,
        reason=f"billing rule {rule.name}"[:500],
        metadata={
            "ruleId": rule.public_id,
            "runId": run.public_id,
            "scheduledAt": run.scheduled_at.isoformat(),
            "periodStart": run.period_start.isoformat(),
            "periodEnd": run.period_end.isoformat(),
            **({"units": format(run.units, "f")} if run.units is not None else {}),
        },
        action="billing.charge",
        # What makes a retry "the same request": the rule, the period, the wallet and the amount.
        fingerprint={
            "rule": rule.public_id,
            "period": period,
            "wallet": str(rule.wallet_id),
            "amount": run.amount,
            "currency": rule.currency,
        },
    )
