"""The kinds of notification, who each goes to, and the facts its templates are filled with.

A kind's cause calls `notify.notify` with an occurrence key that names the occurrence (a failed
attempt of one invoice, one wallet's crossing below its threshold, ...): the same key is mailed
once per recipient, however often the cause is replayed. INVOICE_ISSUED is queued by
invoicing/issuing.py in the transaction that numbers the invoice.
"""

from __future__ import annotations

import dataclasses
import enum


class Audience(enum.Enum):
    BILLING = "BILLING"  # the billing email when set, else the owner and admins
    ADMINS = "ADMINS"  # the owner and admins (technical notices about the project's setup)


class Kind(enum.Enum):
    PAYMENT_FAILED = "PAYMENT_FAILED"
    GRACE_ENDING = "GRACE_ENDING"
    DOWNGRADED = "DOWNGRADED"
    LOW_BALANCE = "LOW_BALANCE"
    CREDITS_EXPIRING = "CREDITS_EXPIRING"
    INVOICE_ISSUED = "INVOICE_ISSUED"
    WEBHOOK_ENDPOINT_DISABLED = "WEBHOOK_ENDPOINT_DISABLED"
    TOP_UP_FAILED = "TOP_UP_FAILED"

    @property
    def slug(self) -> str:
        """The template file name and the `mail_outbox.kind` of its mails."""
        return self.value.lower()

    @property
    def spec(self) -> Spec:
        return SPECS[self]


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    audience: Audience
    # The facts the caller passes (`project_name` and `project_id` are added by `notify`).
    facts: tuple[str, ...]


SPECS: dict[Kind, Spec] = {
    Kind.PAYMENT_FAILED: Spec(
        Audience.BILLING, ("amount", "invoice_id", "attempt", "next_attempt", "grace_until", "portal_url")
    ),
    Kind.GRACE_ENDING: Spec(Audience.BILLING, ("plan_name", "grace_until", "portal_url")),
    Kind.DOWNGRADED: Spec(Audience.BILLING, ("plan_name", "free_plan_name", "portal_url")),
    Kind.LOW_BALANCE: Spec(Audience.BILLING, ("wallet_name", "wallet_id", "balance", "threshold")),
    Kind.CREDITS_EXPIRING: Spec(Audience.BILLING, ("wallet_name", "wallet_id", "amount", "expires_at")),
    Kind.INVOICE_ISSUED: Spec(Audience.BILLING, ("invoice_number", "amount", "issued_on", "pdf_url")),
    Kind.WEBHOOK_ENDPOINT_DISABLED: Spec(Audience.ADMINS, ("endpoint_id", "endpoint_url", "failing_since", "reason")),
    Kind.TOP_UP_FAILED: Spec(Audience.BILLING, ("amount", "wallet_id", "invoice_id", "reason", "portal_url")),
}
COMMON_FACTS = ("project_name", "project_id")
