"""What the billing domain needs from one app instance: its database, the ledger, the policy, a clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from ledgerx.db.engine import Database
from ledgerx.domain.ledger import LedgerService

UTC = dt.UTC
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class BillingPolicy:
    """How the engine behaves; the defaults are the product's (settings may override)."""

    # Delays between attempts of a run that met insufficient funds (after the 1st, 2nd, 3rd …).
    retry_delays: tuple[int, ...] = (3600, 6 * 3600, 24 * 3600)
    # From a rule's first unpaid run: how long retries may go on before the rule is paused.
    grace_period: int = 3 * 86400
    # Rules claimed per scheduler transaction.
    batch_size: int = 200
    # Instants of one rule executed per pass (a long outage of a minute cron catches up in steps).
    max_instants_per_pass: int = 500
    # One advanceTestClock may execute at most this many runs.
    test_clock_max_runs: int = 20_000
    preview_max: int = 1000


class BillingService:
    """What the billing domain needs from one app instance."""

    def __init__(
        self, db: Database, ledger: LedgerService, *, policy: BillingPolicy | None = None, clock: Clock = utcnow
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.policy = policy or BillingPolicy()
        self.clock = clock

    def now(self) -> dt.datetime:
        return self.clock().astimezone(UTC)
