"""What the notifications domain hands its callers: billing details and notification settings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from ledgerx.domain.notifications.kinds import Kind


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    line1: str | None
    line2: str | None
    city: str | None
    postal_code: str | None
    state: str | None
    country: str  # ISO 3166-1 alpha-2, upper case


@dataclasses.dataclass(frozen=True, slots=True)
class TaxId:
    type: str  # a Stripe tax id type (tax_ids.TYPES)
    value: str


@dataclasses.dataclass(frozen=True, slots=True)
class BillingDetailsRecord:
    project_id: uuid.UUID
    email: str | None
    legal_name: str | None
    address: Address | None
    tax_ids: tuple[TaxId, ...]
    updated_at: dt.datetime | None  # None: never set

    @classmethod
    def empty(cls, project_id: uuid.UUID) -> BillingDetailsRecord:
        return cls(project_id, None, None, None, (), None)


@dataclasses.dataclass(frozen=True, slots=True)
class SettingsRecord:
    project_id: uuid.UUID
    disabled: tuple[Kind, ...]  # in declaration order
    updated_at: dt.datetime | None  # None: never changed (every kind on)

    @property
    def enabled(self) -> tuple[Kind, ...]:
        return tuple(k for k in Kind if k not in self.disabled)
