"""A rule's preview: its next instants and what each would charge if it ran now (a dry run)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from ledgerx.domain.billing import charges, clocks, store
from ledgerx.domain.billing import schedule as sch
from ledgerx.domain.billing.records import USAGE_MODES, Rule
from ledgerx.domain.billing.service import BillingService
from ledgerx.domain.errors import BadInput
from ledgerx.domain.usage import carry, periods, price_versions


@dataclasses.dataclass(frozen=True, slots=True)
class PreviewItem:
    at: dt.datetime
    local: dt.datetime
    period_start: dt.datetime
    amount: int
    units: decimal.Decimal | None


async def preview(
    svc: BillingService, project_id: uuid.UUID, rule_id: uuid.UUID, count: int
) -> tuple[Rule, dt.datetime, list[PreviewItem]]:
    """The next `count` instants not yet run (UTC and local) with what each would charge if it ran
    now: flat amounts, plus for the first period the usage recorded in it so far (and the carried
    remainder); later periods have no usage yet. A dry run: nothing is written."""
    _check_count(svc, count)
    async with store.tenant(svc.db, project_id) as conn:
        rule = await store.read_rule(conn, project_id, rule_id)
        return await _preview(conn, svc, project_id, rule, count)


class _Discard(Exception):
    """Rolls a draft's transaction back, carrying the preview made inside it."""

    def __init__(self, found: tuple[Rule, dt.datetime, list[PreviewItem]]) -> None:
        super().__init__("draft preview")
        self.found = found


async def preview_draft(
    svc: BillingService,
    project_id: uuid.UUID,
    count: int,
    draft: Callable[[asyncpg.Connection], Awaitable[Rule]],
) -> tuple[Rule, dt.datetime, list[PreviewItem]]:
    """The preview of a rule as `draft` would make it (rules.create_in or update_in with the
    form's fields), made inside a transaction that is then rolled back: the same validation, the
    same schedule, the same prices as saving would give, and nothing written (the live preview of
    the console's rule form, previewBillingRuleDraft and previewBillingRuleChange)."""
    _check_count(svc, count)
    try:
        async with store.tenant(svc.db, project_id) as conn:
            rule = await draft(conn)
            raise _Discard(await _preview(conn, svc, project_id, rule, count))
    except _Discard as done:
        return done.found


def _check_count(svc: BillingService, count: int) -> None:
    if isinstance(count, bool) or not 1 <= count <= svc.policy.preview_max:
        raise BadInput(f"count must be between 1 and {svc.policy.preview_max}", field="count")


async def _preview(
    conn: asyncpg.Connection, svc: BillingService, project_id: uuid.UUID, rule: Rule, count: int
) -> tuple[Rule, dt.datetime, list[PreviewItem]]:
    _, now = await clocks.project_clock(conn, project_id, svc.now())
    it = rule.instants_after(now if rule.status == "PAUSED" else None)
    instants = [next(it) for _ in range(count)]
    first_units: decimal.Decimal | None = None
    first_amount = rule.amount or 0
    if rule.mode in USAGE_MODES and rule.metric_id is not None:
        info = (await periods.metrics_by_id(conn, [rule.metric_id]))[rule.metric_id]
        end = max(rule.period_start, min(now, instants[0]))
        (first_units,) = await periods.units(conn, [periods.Window(project_id, info, rule.period_start, end)])
        carried = await carry.remainder(conn, rule.wallet_id, info.id)
        (version,) = await price_versions.at(conn, [(info.id, rule.period_start)])
        pricing = charges.period_pricing(rule.unit_price, version or info.pricing)
        first_amount += carry.split_price(pricing.price(first_units), carried).amount
    tz = sch.zone(rule.timezone)
    items: list[PreviewItem] = []
    start = rule.period_start
    for i, at in enumerate(instants):
        amount = first_amount if i == 0 else (rule.amount or 0)
        units = first_units if i == 0 else (decimal.Decimal(0) if rule.mode in USAGE_MODES else None)
        items.append(PreviewItem(at, at.astimezone(tz), start, amount, units))
        start = at
    return rule, now, items
