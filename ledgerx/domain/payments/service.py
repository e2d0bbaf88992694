"""PaymentsService: what one app instance holds for plans, payments and Stripe (settings, the
database, the ledger, the Stripe client, the clock and the effective-plan cache).

It holds no rules: catalog, grants, subscriptions and the webhook handlers depend on it, never
the other way round. What other domains ask of payments (a project's plan limit and quotas) is
`subscriptions.plan_limit` / `subscriptions.plan_meters`."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

from ledgerx.db.engine import Database
from ledgerx.domain.changes import ProjectChanges
from ledgerx.domain.invoicing.links import DocumentLinks
from ledgerx.domain.ledger.service import LedgerService
from ledgerx.domain.payments.stripe_api import StripeGateway, StripeNotConfigured
from ledgerx.settings import Settings

PLAN_CACHE_SECONDS = 15.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PaymentsService:
    """Dependencies of the payments domain functions; `clock` can be replaced to pin instants."""

    def __init__(
        self,
        db: Database,
        ledger: LedgerService,
        settings: Settings,
        *,
        changes: ProjectChanges,
        stripe: StripeGateway | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.settings = settings
        # A change of what a project's plan allows is announced through it, after commit.
        self.changes = changes
        self.clock = clock
        if stripe is None and settings.stripe_api_key:
            stripe = StripeGateway(settings.stripe_api_key, settings.stripe_api_base)
        self.stripe = stripe
        self.grace = dt.timedelta(seconds=settings.subscription_grace_period)
        # Signed links to invoice and statement PDFs (set by Services.build; None: no links).
        self.documents: DocumentLinks | None = None
        # project -> (expires, value): effective plans are read on hot paths (rate limits, quotas).
        self._plan_cache: dict[uuid.UUID, tuple[float, Any]] = {}
        # Bumped by every forget: a state loaded across one may predate the change it announced
        # and is not kept (`remember_plan` with the epoch read before the load).
        self.plan_epoch = 0

    def now(self) -> dt.datetime:
        return self.clock().astimezone(dt.UTC)

    def require_stripe(self) -> StripeGateway:
        if self.stripe is None:
            raise StripeNotConfigured("payments are not configured on this server (set STRIPE_API_KEY)")
        return self.stripe

    # -- events -----------------------------------------------------------------------------------

    def publish(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish committed events through the bus (in the background, never raising)."""
        if events:
            self.ledger.publish(events)

    # -- the effective-plan cache --------------------------------------------------------------------

    def cached_plan(self, project_id: uuid.UUID) -> Any:
        hit = self._plan_cache.get(project_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def remember_plan(self, project_id: uuid.UUID, value: Any, *, loaded_at_epoch: int) -> None:
        """Keep `value` unless a change was announced while it was being loaded."""
        if loaded_at_epoch != self.plan_epoch:
            return
        if len(self._plan_cache) > 100_000:
            self._plan_cache.clear()
        self._plan_cache[project_id] = (time.monotonic() + PLAN_CACHE_SECONDS, value)

    def forget_plan(self, project_id: uuid.UUID | None = None) -> None:
        self.plan_epoch += 1
        if project_id is None:
            self._plan_cache.clear()
        else:
            self._plan_cache.pop(project_id, None)
