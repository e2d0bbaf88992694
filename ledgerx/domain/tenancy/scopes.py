"""Every API-key scope: its name, what it is for, and the operations a key needs it for.

This is the one list. `createApiKey` accepts these names (and `apiKeyScopes` lists them), the
domain rules name these objects (`domain/*/policy.py`, `authorize.Rule`), and GraphQL and
POST /v1/usage check them through those rules. `allows` names the public operations (GraphQL root
fields, HTTP routes, and `Type.field` for a field guarded on its own) that refuse a key without
the scope; an operation named under two scopes needs both (transferCredits writes its source
wallet and reads its target). A key acts only on its own
project and never manages projects, people or keys, whatever its scopes; the few reads of the project
itself (`project`, `projects`, `currentApiKey`, the plan and subscription) take no scope.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ledgerx.domain.errors import BadInput


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    name: str
    description: str
    allows: tuple[str, ...]

    def __str__(self) -> str:
        return self.name


PROJECT_READ = Scope(
    "project:read",
    "Read the project's analytics, over time and live.",
    ("projectAnalytics", "liveMetrics"),
)
USAGE_READ = Scope(
    "usage:read",
    "Read metrics, usage events, summaries, charges and carried remainders.",
    (
        "usageMetrics",
        "usageMetric",
        "usageEvent",
        "usageSummary",
        "usageCharge",
        "usageRemainder",
        "previewUsageCharge",
    ),
)
USAGE_WRITE = Scope(
    "usage:write",
    "Record usage (GraphQL and POST /v1/usage) and charge it to wallets.",
    ("recordUsage", "recordUsageBatch", "chargeUsage", "POST /v1/usage"),
)
WALLETS_READ = Scope(
    "wallets:read",
    "Read wallets and transactions, and follow them live.",
    ("wallet", "wallets", "transaction", "walletUpdated", "transactionPosted", "transferCredits"),
)
WALLETS_WRITE = Scope(
    "wallets:write",
    "Create wallets and move money: credit, debit, transfer, refund, and many at once (bulk posting).",
    (
        "createWallet",
        "creditWallet",
        "debitWallet",
        "transferCredits",
        "refundTransaction",
        "postTransactions",
        "POST /v1/transactions",
    ),
)
BILLING_READ = Scope(
    "billing:read",
    "Read billing rules, their runs and previews, the test clock, the project's billing details and"
    " notification settings, and its invoice and credit note PDFs.",
    (
        "billingRule",
        "billingRules",
        "billingRun",
        "previewBillingRule",
        "testClock",
        "Project.billingDetails",
        "Project.notificationSettings",
    ),
)
BILLING_WRITE = Scope(
    "billing:write",
    "Create, change, pause, resume and run billing rules (and preview a draft or a change before"
    " saving it); advance the test clock.",
    (
        "createBillingRule",
        "updateBillingRule",
        "previewBillingRuleDraft",
        "previewBillingRuleChange",
        "pauseBillingRule",
        "resumeBillingRule",
        "runBillingRule",
        "advanceTestClock",
    ),
)
WEBHOOKS_WRITE = Scope(
    "webhooks:write",
    "Manage the project's outbound webhook endpoints, and read their delivery logs.",
    (
        "webhookEndpoints",
        "webhookEndpoint",
        "createWebhookEndpoint",
        "updateWebhookEndpoint",
        "deleteWebhookEndpoint",
        "rotateWebhookEndpointSecret",
        "sendTestWebhook",
        "redeliverWebhook",
    ),
)

ENTITLEMENTS_READ = Scope(
    "entitlements:read",
    "Check what the project's plan lets it use: features, limits with usage, configuration.",
    ("entitlement", "entitlements", "GET /v1/entitlements", "GET /v1/entitlements/{featureKey}"),
)

ALL: tuple[Scope, ...] = (
    PROJECT_READ,
    USAGE_READ,
    USAGE_WRITE,
    WALLETS_READ,
    WALLETS_WRITE,
    BILLING_READ,
    BILLING_WRITE,
    WEBHOOKS_WRITE,
    ENTITLEMENTS_READ,
)
BY_NAME: dict[str, Scope] = {s.name: s for s in ALL}
NAMES: tuple[str, ...] = tuple(sorted(BY_NAME))

# The `reason` of the BAD_USER_INPUT a key without scopes gets (a key that can do nothing scoped is
# almost always a client that forgot to send them).
NO_SCOPES = "NO_SCOPES"


def validate(names: Iterable[str]) -> list[str]:
    """Known scope names, deduplicated and sorted; BAD_USER_INPUT on `scopes` for an unknown one
    (`unknown` lists them) or for none at all (`reason` NO_SCOPES)."""
    given = [s.strip() for s in names]
    unknown = sorted({s for s in given if s not in BY_NAME})
    if unknown:
        raise BadInput(
            f"unknown scope {', '.join(unknown)}; known scopes: {', '.join(NAMES)}",
            field="scopes",
            unknown=unknown,
        )
    if not given:
        raise BadInput(
            f"an API key needs at least one scope; known scopes: {', '.join(NAMES)}", field="scopes", reason=NO_SCOPES
        )
    return sorted(set(given))
