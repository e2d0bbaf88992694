"""`ledgerx demo`: a project with wallets, usage, billing rules and a plan, so the dashboard has life.

Everything goes through the domain functions the API uses (validation, audit rows, row-level
security, ledger postings), never raw SQL. Running it again adds nothing: the user, project,
wallets, metric, rules and plan are looked up by name or key before being created, and credits and
usage events carry fixed idempotency keys (their timestamps are anchored to the project's creation,
so a second run sends the very same events).

Outbound webhook endpoints (DESIGN.md) do not exist yet; the demo will add one when they do.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any

from ledgerx.domain.actor import Actor
from ledgerx.domain.auth.service import normalize_email
from ledgerx.domain.billing import rules, store, validation
from ledgerx.domain.errors import AppError, Conflict
from ledgerx.domain.ledger import posting, reads, wallets
from ledgerx.domain.ledger.service import WalletRef
from ledgerx.domain.payments import catalog, plans, subscriptions
from ledgerx.domain.payments.money import Money
from ledgerx.domain.tenancy import projects
from ledgerx.domain.usage import ingest, metrics
from ledgerx.ids import encode
from ledgerx.services import Services

EMAIL = "demo@example.com"
PASSWORD = "ledgerx-demo-password"  # development only: `ledgerx demo` refuses to run in production
PROJECT_KEY = "demo"
PROJECT_NAME = "Demo"
PLAN_NAME = "Demo plan"
METRIC_KEY = "api_calls"
# (name, credits granted once, low-balance threshold)
WALLETS = (("Main", 50_000, 5_000), ("Team Alpha", 20_000, 2_000), ("Team Beta", 8_000, 1_000))
EVENT_DAYS = 14
EVENTS_PER_DAY = 12


class DemoError(Exception):
    """The demo cannot be seeded (said in one line)."""


@dataclasses.dataclass
class DemoReport:
    email: str
    password: str
    project_id: str
    wallets: list[tuple[str, str, int]]  # name, id, balance
    created: list[str]  # what this run added ("" when everything was there already)
    events_recorded: int
    events_already_there: int
    events_refused: int  # e.g. older than USAGE_LATE_WINDOW on a rerun long after the first
    notes: list[str]

    def lines(self) -> list[str]:
        added = f"added: {', '.join(self.created)}" if self.created else "already seeded; nothing added"
        out = [
            f"Demo project ready ({added})",
            f"  sign in    {self.email} / {self.password}",
            f"  project    {self.project_id}",
        ]
        out += [f"  wallet     {name}: {wid}, balance {balance}" for name, wid, balance in self.wallets]
        usage = f"{self.events_recorded} events recorded, {self.events_already_there} already there"
        if self.events_refused:
            usage += f", {self.events_refused} refused (outside the accepted time window)"
        out.append(f"  usage      {usage}")
        out += [f"  note       {n}" for n in self.notes]
        return out


async def seed(services: Services, *, now: dt.datetime | None = None) -> DemoReport:
    """Create (or find) the demo user and project and fill the project; idempotent."""
    if services.settings.production:
        raise DemoError("the demo has a published password; it does not run with LEDGERX_ENV=production")
    now = now or dt.datetime.now(dt.UTC)
    system = Actor.system()
    created: list[str] = []

    project_id = await projects.find_by_external_key(services.db, PROJECT_KEY)
    if project_id is None:
        owner = Actor("user", await _demo_user(services, created))
        project = await projects.create_project(services.db, owner, name=PROJECT_NAME, external_key=PROJECT_KEY)
        project_id = project.id
        created.append("project")
    else:
        # Its creator is the demo user (no sign-in needed, so reruns spend no log-in attempts).
        project = await projects.get_project(services.db, project_id)
        creator = await services.auth.get_user(project.created_by) if project.created_by else None
        if creator is None or creator.email != normalize_email(EMAIL):
            raise DemoError(f"a project with externalKey {PROJECT_KEY!r} exists that the demo did not create")
        owner = Actor("user", creator.id)

    # Wallets, each with a one-time grant (a fixed idempotency key: a second run returns the first).
    existing = {w.name: w for w in await reads.list_wallets(services.ledger, project_id, limit=100, after=None)}
    refs: dict[str, WalletRef] = {}
    for name, grant, threshold in WALLETS:
        w = existing.get(name)
        if w is None:
            w = await wallets.create_wallet(
                services.ledger, owner, project_id, name=name, low_balance_threshold=threshold
            )
            created.append(f"wallet {name}")
        refs[name] = WalletRef(w.id, project_id, w.currency)
        await posting.credit_wallet(
            services.ledger, owner, refs[name], grant, f"demo:grant:{name}", reason="demo credits"
        )

    # A metric and two weeks of events, anchored to the project's creation so reruns send the same.
    try:
        await metrics.define_metric(
            services.db,
            owner,
            project_id,
            key=METRIC_KEY,
            name="API calls",
            aggregation="SUM",
            unit_price=decimal.Decimal("0.5"),
        )
        created.append(f"metric {METRIC_KEY}")
    except Conflict:
        pass
    anchor = min(project.created_at, now).astimezone(dt.UTC)
    events = _events(anchor)
    result = await ingest.record_batch(
        services.db,
        project_id,
        events,
        ingest.IngestConfig.of(services.settings),
        now=now,
        bus=services.events,
        quotas=services.quotas,
    )

    # Billing rules on the main wallet: a daily platform fee and the metered usage.
    have = {r.name for r in await store.list_rules(services.db, project_id, limit=100, after=None)}
    main = refs["Main"]
    wanted = (
        validation.RuleFields(name="Platform fee", mode="DAILY_FLAT", amount=100, timezone="UTC", time_of_day="00:00"),
        validation.RuleFields(name="API usage", mode="USAGE_BASED", metric_key=METRIC_KEY, timezone="UTC"),
    )
    for fields in wanted:
        if fields.name not in have:
            await rules.create_rule(
                services.billing, owner, project_id=project_id, wallet_id=main.id, currency=main.currency, fields=fields
            )
            created.append(f"rule {fields.name}")

    # A free plan with a monthly quota, applied to the project (no Stripe needed at price 0).
    plan = next((p for p in await catalog.list_plans(services.payments) if p.name == PLAN_NAME), None)
    if plan is None:
        plan = await plans.create_plan(
            services.payments,
            system,
            name=PLAN_NAME,
            tier="FREE",
            interval="MONTH",
            price=Money(0, "USD"),
            included_credits=0,
            monthly_quotas={METRIC_KEY: 1_000_000},
            features=["Demo data"],
        )
        created.append("plan")
    effective = await subscriptions.effective_plan(services.payments, project_id)
    if effective.plan is None or effective.plan.id != plan.id:
        await subscriptions.override_plan(
            services.payments,
            system,
            project_id,
            plan_id=plan.id,
            rate_limit=None,
            monthly_quotas=None,
            expires_at=None,
            reason="ledgerx demo",
        )

    balances = {w.name: w for w in await reads.list_wallets(services.ledger, project_id, limit=100, after=None)}
    return DemoReport(
        email=EMAIL,
        password=PASSWORD,
        project_id=encode("project", project_id),
        wallets=[(name, encode("wallet", balances[name].id), balances[name].balance) for name, _, _ in WALLETS],
        created=created,
        events_recorded=result.accepted,
        events_already_there=result.duplicates,
        events_refused=len(result.rejected),
        notes=[
            "outbound webhook endpoints are not in LedgerX yet: the demo has none",
            "the billing rules charge Main from the next run of the scheduler (inside `ledgerx serve`)",
        ],
    )


async def _demo_user(services: Services, created: list[str]) -> uuid.UUID:
    actor = Actor.system()
    try:
        result = await services.auth.sign_up(EMAIL, PASSWORD, "Demo User", actor)
        created.append("user")
        return result.user.id
    except Conflict:
        pass
    try:
        return (await services.auth.log_in(EMAIL, PASSWORD, actor)).user.id
    except AppError as exc:
        raise DemoError(
            f"{normalize_email(EMAIL)} exists but does not accept the demo password ({exc.message}); "
            "use another data directory or database for the demo"
        ) from None


def _events(anchor: dt.datetime) -> list[dict[str, Any]]:
    """EVENT_DAYS days of calls before `anchor`, a few an hour in the working day (deterministic)."""
    day0 = anchor.replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=EVENT_DAYS - 1)
    out = []
    for d in range(EVENT_DAYS):
        for i in range(EVENTS_PER_DAY):
            at = day0 + dt.timedelta(days=d, hours=8 + i, minutes=(7 * i + 13 * d) % 60)
            if at > anchor:
                break
            out.append(
                {
                    "metricKey": METRIC_KEY,
                    "units": 5 + (d * 7 + i * 3) % 40,
                    "idempotencyKey": f"demo:call:{d}:{i}",
                    "occurredAt": at.isoformat().replace("+00:00", "Z"),
                    "properties": {"endpoint": ("/search", "/render", "/export")[(d + i) % 3]},
                }
            )
    return out
