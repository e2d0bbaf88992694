"""Billing details: `updateBillingDetails` and `Project.billingDetails` (DESIGN.md "Notifications").

Admins set them (partially: left-out fields stay, null clears), every member reads them, API keys
read them with billing:read and never change them; each change writes one audit row; bad input is
BAD_USER_INPUT naming the field and writes nothing; another tenant sees NOT_FOUND."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput
from ledgerx.domain.notifications import billing_details
from ledgerx.services import Services
from tests.conftest import GQL, SignedIn, sign_up
from tests.tenancy_helpers import add_member, create_project, owner_sql

UPDATE = """
mutation($i: UpdateBillingDetailsInput!) {
  updateBillingDetails(input: $i) {
    email legalName address { line1 line2 city postalCode state country } taxIds { type value } updatedAt
  }
}
"""
READ = """
query($p: ID!) { project(id: $p) { id billingDetails {
  email legalName address { line1 line2 city postalCode state country } taxIds { type value } updatedAt
} } }
"""
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"

FULL = {
    "email": "  Billing@ACME.example  ",
    "legalName": "ACME Europe GmbH",
    "address": {
        "line1": "Hauptstraße 1",
        "line2": None,
        "city": "Berlin",
        "postalCode": "10115",
        "state": None,
        "country": "de",
    },
    "taxIds": [{"type": "EU_VAT", "value": "DE123456789"}, {"type": "de_stn", "value": "12/345/67890"}],
}
STORED = {
    "email": "billing@acme.example",
    "legalName": "ACME Europe GmbH",
    "address": {
        "line1": "Hauptstraße 1",
        "line2": None,
        "city": "Berlin",
        "postalCode": "10115",
        "state": None,
        "country": "DE",
    },
    "taxIds": [{"type": "eu_vat", "value": "DE123456789"}, {"type": "de_stn", "value": "12/345/67890"}],
}


async def read(gql: GQL, project_id: str, **auth: Any) -> dict[str, Any]:
    details: dict[str, Any] = (await gql.ok(READ, {"p": project_id}, **auth))["project"]["billingDetails"]
    return details


def without_time(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "updatedAt"}


async def key(gql: GQL, owner: SignedIn, project_id: str, scopes: list[str]) -> str:
    i = {"projectId": project_id, "name": "k", "scopes": scopes}
    return str((await gql.ok(CREATE_KEY, {"i": i}, token=owner.token))["createApiKey"]["secret"])


async def test_admins_set_billing_details_and_members_read_them(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    admin = await add_member(gql, owner, pid, "ADMIN")
    viewer = await add_member(gql, owner, pid, "VIEWER")

    # Nothing set yet: an empty record, not an error.
    assert await read(gql, pid, token=viewer.token) == {
        "email": None,
        "legalName": None,
        "address": None,
        "taxIds": [],
        "updatedAt": None,
    }
    saved = (await gql.ok(UPDATE, {"i": {"projectId": pid, **FULL}}, token=admin.token))["updateBillingDetails"]
    assert without_time(saved) == STORED and saved["updatedAt"]
    assert without_time(await read(gql, pid, token=viewer.token)) == STORED

    # Only the fields given change; null and "" clear one; a list or an address is replaced whole.
    saved = (await gql.ok(UPDATE, {"i": {"projectId": pid, "legalName": "ACME SE"}}, token=owner.token))[
        "updateBillingDetails"
    ]
    assert without_time(saved) == {**STORED, "legalName": "ACME SE"}
    i = {"projectId": pid, "email": None, "legalName": "", "taxIds": [{"type": "gb_vat", "value": "GB123"}]}
    saved = (await gql.ok(UPDATE, {"i": i}, token=admin.token))["updateBillingDetails"]
    assert without_time(saved) == {
        **STORED,
        "email": None,
        "legalName": None,
        "taxIds": [{"type": "gb_vat", "value": "GB123"}],
    }
    saved = (await gql.ok(UPDATE, {"i": {"projectId": pid, "address": None, "taxIds": []}}, token=admin.token))[
        "updateBillingDetails"
    ]
    assert (saved["address"], saved["taxIds"]) == (None, [])

    audit = await owner_sql(
        services.settings,
        "SELECT actor_type, actor_id, target_id, before, after FROM audit_log"
        " WHERE project_id = $1 AND action = 'billing_details.update' ORDER BY id",
        ids.decode("project", pid),
    )
    assert len(audit) == 4
    assert [a["actor_id"] for a in audit] == [ids.decode("user", u.user_id) for u in (admin, owner, admin, admin)]
    assert {a["target_id"] for a in audit} == {pid}
    first_before, first_after = json.loads(audit[0]["before"]), json.loads(audit[0]["after"])
    assert first_before == {"email": None, "legalName": None, "address": None, "taxIds": []}
    assert first_after["email"] == "billing@acme.example" and first_after["address"]["country"] == "DE"
    assert json.loads(audit[1]["before"])["legalName"] == "ACME Europe GmbH"
    assert json.loads(audit[1]["after"])["legalName"] == "ACME SE"


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("email format", {"email": "not-an-address"}, "email"),
    ("email with a space", {"email": "a b@example.com"}, "email"),
    ("legal name too long", {"legalName": "x" * 201}, "legalName"),
    ("legal name on two lines", {"legalName": "ACME\nInc"}, "legalName"),
    ("unknown country", {"address": {"country": "XX"}}, "address.country"),
    ("alpha-3 country", {"address": {"country": "DEU"}}, "address.country"),
    ("empty country", {"address": {"country": " "}}, "address.country"),
    ("line1 too long", {"address": {"country": "US", "line1": "x" * 201}}, "address.line1"),
    ("city with a tab", {"address": {"country": "US", "city": "New\tYork"}}, "address.city"),
    ("postal code too long", {"address": {"country": "US", "postalCode": "1" * 21}}, "address.postalCode"),
    ("unknown tax id type", {"taxIds": [{"type": "vat", "value": "1"}]}, "taxIds.0.type"),
    ("tax id value", {"taxIds": [{"type": "eu_vat", "value": "DE$1"}]}, "taxIds.0.value"),
    ("empty tax id value", {"taxIds": [{"type": "eu_vat", "value": "  "}]}, "taxIds.0.value"),
    ("too many tax ids", {"taxIds": [{"type": "eu_vat", "value": f"DE{n}"} for n in range(6)]}, "taxIds"),
    (
        "a tax id twice",
        {"taxIds": [{"type": "eu_vat", "value": "DE1"}, {"type": "EU_VAT", "value": "DE1"}]},
        "taxIds.1",
    ),
    # NUL never reaches the domain over GraphQL: the pipeline refuses it, naming the input field.
    ("NUL in a line", {"address": {"country": "US", "line1": "a\x00b"}}, "line1"),
]


@pytest.mark.parametrize(("case", "given", "field"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_names_its_field_and_writes_nothing(
    gql: GQL, services: Services, case: str, given: dict[str, Any], field: str
) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    err = await gql.error(UPDATE, {"i": {"projectId": pid, "legalName": "Kept Ltd", **given}}, token=owner.token)
    assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", field), err
    assert (await read(gql, pid, token=owner.token))["updatedAt"] is None  # nothing written, not even legalName
    rows = await owner_sql(
        services.settings,
        "SELECT count(*) AS n FROM audit_log WHERE project_id = $1 AND action = 'billing_details.update'",
        ids.decode("project", pid),
    )
    assert rows[0]["n"] == 0


async def test_the_domain_refuses_nul_and_control_characters_itself(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = ids.decode("project", await create_project(gql, owner))
    actor = Actor.system("test")
    for changes, field in (
        (billing_details.Changes(legal_name="a\x00b"), "legalName"),
        (billing_details.Changes(email="a\x00@example.com"), "email"),
        (billing_details.Changes(address=billing_details.AddressInput(country="US", state="N\x00Y")), "address.state"),
        (billing_details.Changes(tax_ids=[billing_details.TaxIdInput("eu_vat", "DE\x001")]), "taxIds.0.value"),
        (billing_details.Changes(legal_name="bell\x07"), "legalName"),
    ):
        with pytest.raises(BadInput) as caught:
            await billing_details.update(services.db, actor, pid, changes)
        assert caught.value.field == field
    assert (await billing_details.get(services.db, pid)).updated_at is None


async def test_roles_keys_and_other_tenants(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    member = await add_member(gql, owner, pid, "MEMBER")
    await gql.ok(UPDATE, {"i": {"projectId": pid, **FULL}}, token=owner.token)

    # Members read; only admins write.
    assert without_time(await read(gql, pid, token=member.token)) == STORED
    err = await gql.error(UPDATE, {"i": {"projectId": pid, "legalName": "Mine"}}, token=member.token)
    assert err["code"] == "FORBIDDEN"

    # API keys: reading takes billing:read; writing is never theirs.
    reader = await key(gql, owner, pid, ["billing:read"])
    other_scopes = await key(gql, owner, pid, ["wallets:read", "billing:write", "webhooks:write"])
    assert without_time(await read(gql, pid, headers={"Authorization": f"Bearer {reader}"})) == STORED
    body = await gql(READ, {"p": pid}, headers={"Authorization": f"Bearer {other_scopes}"})
    assert body["data"]["project"] == {"id": pid, "billingDetails": None}
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert body["errors"][0]["extensions"]["scope"] == "billing:read"
    for secret in (reader, other_scopes):
        err = await gql.error(
            UPDATE, {"i": {"projectId": pid, "legalName": "Key"}}, headers={"Authorization": f"Bearer {secret}"}
        )
        assert err["code"] == "FORBIDDEN"

    # Another tenant (its admin, its key): the project does not exist for them.
    stranger = await sign_up(gql)
    elsewhere = await create_project(gql, stranger, external_key=f"x-{secrets.token_hex(4)}")
    stranger_key = await key(gql, stranger, elsewhere, ["billing:read"])
    assert (await gql.error(READ, {"p": pid}, token=stranger.token))["code"] == "NOT_FOUND"
    err = await gql.error(UPDATE, {"i": {"projectId": pid, "legalName": "Hijack"}}, token=stranger.token)
    assert err["code"] == "NOT_FOUND"
    err = await gql.error(READ, {"p": pid}, headers={"Authorization": f"Bearer {stranger_key}"})
    assert err["code"] == "NOT_FOUND"
    # ... and their own project shows their (empty) details, never this one's.
    assert (await read(gql, elsewhere, token=stranger.token))["email"] is None
    assert without_time(await read(gql, pid, token=owner.token)) == STORED
