"""A project's billing details: the billing contact the mails go to, and what invoices will print
(legal name, postal address, tax ids).

`update` changes only the fields it is given (`KEEP` leaves one as it is; None, or an empty
string, clears it); an address or a list of tax ids is replaced as a whole. Every value is checked
before anything is written, and refused with BAD_USER_INPUT naming its field: an email address,
an ISO 3166-1 country code, Stripe's tax id types, lengths, one line of text (no control
characters, NUL included). The change and its audit row are one transaction.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ledgerx.db.engine import Database
from ledgerx.db.models import BillingDetails
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.auth.service import normalize_email
from ledgerx.domain.errors import BadInput
from ledgerx.domain.notifications import countries, tax_ids
from ledgerx.domain.notifications.records import Address, BillingDetailsRecord, TaxId
from ledgerx.ids import encode

MAX_LEGAL_NAME = 200
MAX_LINE = 200
MAX_CITY = 100
MAX_POSTAL_CODE = 20
MAX_STATE = 100

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Keep(enum.Enum):
    KEEP = "KEEP"


KEEP = Keep.KEEP


@dataclasses.dataclass(frozen=True, slots=True)
class AddressInput:
    country: str
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    postal_code: str | None = None
    state: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TaxIdInput:
    type: str
    value: str


@dataclasses.dataclass(frozen=True, slots=True)
class Changes:
    """The fields `updateBillingDetails` sets (KEEP: left as it is; None: cleared)."""

    email: str | Keep | None = KEEP
    legal_name: str | Keep | None = KEEP
    address: AddressInput | Keep | None = KEEP
    tax_ids: Sequence[TaxIdInput] | Keep | None = KEEP


def text(value: str | None, field: str, max_len: int) -> str | None:
    """One line of text, trimmed (None for nothing): no control characters, at most `max_len`."""
    if value is None:
        return None
    if "\x00" in value:
        raise BadInput("must not contain the NUL character", field=field)
    if _CONTROL.search(value):
        raise BadInput("must be one line of text without control characters", field=field)
    value = value.strip()
    if len(value) > max_len:
        raise BadInput(f"is longer than {max_len} characters", field=field)
    return value or None


def email(value: str | None) -> str | None:
    clean = text(value, "email", 254)
    return None if clean is None else normalize_email(clean)


def country(value: str, field: str = "address.country") -> str:
    code = (text(value, field, 2) or "").upper()
    if code not in countries.CODES:
        raise BadInput("expected an ISO 3166-1 alpha-2 country code, such as DE or US", field=field)
    return code


def address(value: AddressInput | None) -> Address | None:
    if value is None:
        return None
    return Address(
        line1=text(value.line1, "address.line1", MAX_LINE),
        line2=text(value.line2, "address.line2", MAX_LINE),
        city=text(value.city, "address.city", MAX_CITY),
        postal_code=text(value.postal_code, "address.postalCode", MAX_POSTAL_CODE),
        state=text(value.state, "address.state", MAX_STATE),
        country=country(value.country),
    )


def tax_id_list(values: Sequence[TaxIdInput] | None) -> tuple[TaxId, ...]:
    if not values:
        return ()
    if len(values) > tax_ids.MAX_IDS:
        raise BadInput(f"at most {tax_ids.MAX_IDS} tax ids", field="taxIds")
    out: list[TaxId] = []
    for i, v in enumerate(values):
        kind = (text(v.type, f"taxIds.{i}.type", 20) or "").lower()
        if kind not in tax_ids.TYPES:
            raise BadInput(
                "unknown tax id type; expected one of Stripe's, such as eu_vat, gb_vat or us_ein",
                field=f"taxIds.{i}.type",
            )
        number = text(v.value, f"taxIds.{i}.value", tax_ids.MAX_VALUE)
        if number is None or not tax_ids.VALUE.fullmatch(number):
            raise BadInput("expected letters, digits, spaces, dots, dashes or slashes", field=f"taxIds.{i}.value")
        tid = TaxId(kind, number)
        if tid in out:
            raise BadInput("the same tax id twice", field=f"taxIds.{i}")
        out.append(tid)
    return tuple(out)


def record_of(row: BillingDetails) -> BillingDetailsRecord:
    addr = None
    if row.address_country is not None:
        addr = Address(
            row.address_line1,
            row.address_line2,
            row.address_city,
            row.address_postal_code,
            row.address_state,
            row.address_country,
        )
    tids = tuple(TaxId(str(t["type"]), str(t["value"])) for t in row.tax_ids)
    return BillingDetailsRecord(row.project_id, row.email, row.legal_name, addr, tids, row.updated_at)


def snapshot(r: BillingDetailsRecord) -> dict[str, Any]:
    """What the audit log records of the details (the whole contact: it is small)."""
    return {
        "email": r.email,
        "legalName": r.legal_name,
        "address": None if r.address is None else dataclasses.asdict(r.address),
        "taxIds": [dataclasses.asdict(t) for t in r.tax_ids],
    }


def from_snapshot(project_id: uuid.UUID, d: Mapping[str, Any]) -> BillingDetailsRecord:
    """The record a `snapshot` froze (an invoice's billing details as they were at issue)."""
    a = d.get("address")
    addr = None
    if isinstance(a, Mapping) and a.get("country"):
        addr = Address(
            a.get("line1"), a.get("line2"), a.get("city"), a.get("postal_code"), a.get("state"), str(a["country"])
        )
    tids = tuple(
        TaxId(str(t.get("type")), str(t.get("value"))) for t in d.get("taxIds") or [] if isinstance(t, Mapping)
    )
    return BillingDetailsRecord(project_id, d.get("email"), d.get("legalName"), addr, tids, None)


def _columns(changes: Changes) -> dict[str, Any]:
    """Checked column values of the given fields (raises before anything is written)."""
    cols: dict[str, Any] = {}
    if not isinstance(changes.email, Keep):
        cols["email"] = email(changes.email)
    if not isinstance(changes.legal_name, Keep):
        cols["legal_name"] = text(changes.legal_name, "legalName", MAX_LEGAL_NAME)
    if not isinstance(changes.address, Keep):
        a = address(changes.address)
        cols.update(
            address_line1=a.line1 if a else None,
            address_line2=a.line2 if a else None,
            address_city=a.city if a else None,
            address_postal_code=a.postal_code if a else None,
            address_state=a.state if a else None,
            address_country=a.country if a else None,
        )
    if not isinstance(changes.tax_ids, Keep):
        cols["tax_ids"] = [dataclasses.asdict(t) for t in tax_id_list(changes.tax_ids)]
    return cols


async def update(db: Database, actor: Actor, project_id: uuid.UUID, changes: Changes) -> BillingDetailsRecord:
    cols = _columns(changes)
    async with db.transaction(project_id=project_id) as s:
        row = (
            await s.execute(select(BillingDetails).where(BillingDetails.project_id == project_id).with_for_update())
        ).scalar_one_or_none()
        before = record_of(row) if row is not None else BillingDetailsRecord.empty(project_id)
        by = actor.id if actor.type == "user" else None
        stmt = pg_insert(BillingDetails).values(project_id=project_id, updated_by=by, **cols)
        upsert = stmt.on_conflict_do_update(
            index_elements=[BillingDetails.project_id],
            set_={**cols, "updated_by": by, "updated_at": stmt.excluded.updated_at},
        ).returning(BillingDetails)
        saved = record_of((await s.execute(upsert.execution_options(populate_existing=True))).scalar_one())
        await audit.record(
            s,
            actor,
            "billing_details.update",
            project_id=project_id,
            target_type="project",
            target_id=encode("project", project_id),
            before=snapshot(before),
            after=snapshot(saved),
        )
    return saved


async def get_many(db: Database, project_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, BillingDetailsRecord]:
    """Each project's details (an empty record for a project that never set any); one statement."""
    keys = list(dict.fromkeys(project_ids))
    if not keys:
        return {}
    async with db.transaction(project_ids=keys) as s:
        rows = (await s.execute(select(BillingDetails).where(BillingDetails.project_id.in_(keys)))).scalars().all()
        found = {r.project_id: record_of(r) for r in rows}
    return {p: found.get(p) or BillingDetailsRecord.empty(p) for p in keys}


async def get(db: Database, project_id: uuid.UUID) -> BillingDetailsRecord:
    return (await get_many(db, [project_id]))[project_id]
