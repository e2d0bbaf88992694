"""Plans, credit packs, checkout, subscriptions (proration, dunning), the Stripe webhook
pipeline and reconciliation. Stripe is the payment rail; LedgerX keeps the logic and the books.

Entry points for other domains:
- `subscriptions.plan_limit(svc, project_id)` — the gateway limit of the project's plan (`LimitPolicy`);
- `subscriptions.plan_meters(svc, project_id)` — the usage meters of the project's features (monthly
  quotas and METERED entitlements, one set; `QuotaPolicy`), and how long they hold;
- `subscriptions.plan_quotas(svc, project_id)` — `{metric: units per month}` of the project's plan;
- `subscriptions.effective_plan(svc, project_id)` — the plan, its source and limits.
"""

from ledgerx.domain.payments.service import PaymentsService

__all__ = ["PaymentsService"]
