"""Outbound webhooks over GraphQL: the DESIGN.md names, who may manage them, bad input, tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from ledgerx import ids
from ledgerx.services import Services
from tests.conftest import GQL, SignedIn, sign_up
from tests.tenancy_helpers import add_member, create_project, owner_sql
from tests.webhooks_out_receiver import Receiver, running_receiver

CREATE = """mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) {
  secret endpoint { id projectId url events enabled disabledReason description createdAt } } }"""
UPDATE = "mutation($i: UpdateWebhookEndpointInput!) { updateWebhookEndpoint(input: $i) { id url events enabled disabledReason description } }"
DELETE = "mutation($id: ID!) { deleteWebhookEndpoint(id: $id) }"
ROTATE = (
    "mutation($id: ID!) { rotateWebhookEndpointSecret(id: $id) { secret endpoint { id previousSecretExpiresAt } } }"
)
TEST = "mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id eventId eventType status attempts nextAttemptAt } }"
REDELIVER = "mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id eventId status } }"
ONE = "query($id: ID!) { webhookEndpoint(id: $id) { id url } }"
LIST = """query($p: ID!, $f: Int, $a: String) { webhookEndpoints(projectId: $p, first: $f, after: $a) {
  edges { node { id url events
    deliveries(first: 5) { edges { node { id eventId eventType status attempts lastStatusCode lastError
      nextAttemptAt createdAt deliveredAt attemptLog { attempt statusCode error durationMs at } } }
      pageInfo { hasNextPage endCursor } } } }
  pageInfo { hasNextPage endCursor } } }"""
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
AUDIT = "query($p: ID!) { auditLog(projectId: $p, first: 50) { edges { node { action } } } }"


@pytest.fixture
async def receiver(services: Services) -> AsyncIterator[Receiver]:
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")
    async with running_receiver() as r:
        yield r
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")


async def owned_project(gql: GQL) -> tuple[SignedIn, str]:
    owner = await sign_up(gql)
    return owner, await create_project(gql, owner, external_key=None)


def new_endpoint(project_id: str, url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"i": {"projectId": project_id, "url": url, "events": events or ["*"], **extra}}


async def test_an_admin_manages_endpoints_and_sees_each_delivery(
    gql: GQL, services: Services, receiver: Receiver
) -> None:
    owner, pid = await owned_project(gql)
    made = (
        await gql.ok(
            CREATE, new_endpoint(pid, receiver.url(), ["invoice.paid"], description="books"), token=owner.token
        )
    )["createWebhookEndpoint"]
    hook = made["endpoint"]
    assert made["secret"].startswith("whsec_") and hook["id"].startswith("whk_")
    assert (hook["projectId"], hook["url"], hook["events"], hook["enabled"], hook["description"]) == (
        pid,
        receiver.url(),
        ["invoice.paid"],
        True,
        "books",
    )

    sent = (await gql.ok(TEST, {"e": hook["id"]}, token=owner.token))["sendTestWebhook"]
    assert sent["id"].startswith("dlv_") and sent["eventId"].startswith("evt_")
    assert (sent["eventType"], sent["status"], sent["attempts"]) == ("webhook.test", "PENDING", 0)
    assert await services.webhook_delivery.run_once() == 1
    [got] = receiver.received
    assert Webhook(made["secret"]).verify(got.body, got.headers)["id"] == sent["eventId"]

    again = (await gql.ok(REDELIVER, {"d": sent["id"]}, token=owner.token))["redeliverWebhook"]
    assert again["id"] != sent["id"] and again["eventId"] == sent["eventId"] and again["status"] == "PENDING"
    await services.webhook_delivery.run_once()
    assert [r.headers["webhook-id"] for r in receiver.received] == [sent["eventId"]] * 2

    listed = (await gql.ok(LIST, {"p": pid}, token=owner.token))["webhookEndpoints"]
    [node] = [e["node"] for e in listed["edges"]]
    log = [e["node"] for e in node["deliveries"]["edges"]]
    assert [d["id"] for d in log] == [again["id"], sent["id"]]  # newest first
    for d in log:
        assert (d["status"], d["attempts"], d["lastStatusCode"], d["nextAttemptAt"]) == ("SUCCEEDED", 1, 200, None)
        assert [(a["attempt"], a["statusCode"], a["error"]) for a in d["attemptLog"]] == [(1, 200, None)]

    updated = (await gql.ok(UPDATE, {"i": {"id": hook["id"], "events": ["*"], "enabled": False}}, token=owner.token))[
        "updateWebhookEndpoint"
    ]
    assert (updated["events"], updated["enabled"], updated["disabledReason"]) == (
        ["*"],
        False,
        "disabled through the API",
    )
    conflict = await gql.error(TEST, {"e": hook["id"]}, token=owner.token)
    assert (conflict["code"], conflict["reason"]) == ("CONFLICT", "ENDPOINT_DISABLED")

    rotated = (await gql.ok(ROTATE, {"id": hook["id"]}, token=owner.token))["rotateWebhookEndpointSecret"]
    assert rotated["secret"] != made["secret"] and rotated["endpoint"]["previousSecretExpiresAt"]

    assert (await gql.ok(DELETE, {"id": hook["id"]}, token=owner.token))["deleteWebhookEndpoint"] is True
    assert (await gql.error(ONE, {"id": hook["id"]}, token=owner.token))["code"] == "NOT_FOUND"
    assert (await gql.ok(LIST, {"p": pid}, token=owner.token))["webhookEndpoints"]["edges"] == []

    actions = [e["node"]["action"] for e in (await gql.ok(AUDIT, {"p": pid}, token=owner.token))["auditLog"]["edges"]]
    for action in (
        "webhook_endpoint.create",
        "webhook_endpoint.send_test",
        "webhook_delivery.redeliver",
        "webhook_endpoint.update",
        "webhook_endpoint.rotate_secret",
        "webhook_endpoint.delete",
    ):
        assert action in actions, actions


async def test_bad_input_has_clear_codes(gql: GQL) -> None:
    owner, pid = await owned_project(gql)
    bad_url = await gql.error(CREATE, new_endpoint(pid, "ftp://example.com/x"), token=owner.token)
    assert (bad_url["code"], bad_url["field"], bad_url["reason"]) == ("BAD_USER_INPUT", "url", "INVALID_URL")
    not_a_url = await gql.error(CREATE, new_endpoint(pid, "just words"), token=owner.token)
    assert (not_a_url["code"], not_a_url["field"]) == ("BAD_USER_INPUT", "url")
    unknown = await gql.error(
        CREATE, new_endpoint(pid, "https://example.com/h", ["invoice.paid", "nope"]), token=owner.token
    )
    assert (unknown["code"], unknown["field"], unknown["unknown"]) == ("BAD_USER_INPUT", "events", ["nope"])
    no_events = {"i": {"projectId": pid, "url": "https://example.com/h", "events": []}}
    none = await gql.error(CREATE, no_events, token=owner.token)
    assert (none["code"], none["field"]) == ("BAD_USER_INPUT", "events")
    wrong_kind = await gql.error(ONE, {"id": "wal_" + "0" * 26}, token=owner.token)
    assert (wrong_kind["code"], wrong_kind["field"]) == ("BAD_USER_INPUT", "id")
    bad_page = await gql.error(LIST, {"p": pid, "f": 1000}, token=owner.token)
    assert (bad_page["code"], bad_page["field"]) == ("BAD_USER_INPUT", "first")
    # Nothing was created by the refusals.
    assert (await gql.ok(LIST, {"p": pid}, token=owner.token))["webhookEndpoints"]["edges"] == []


async def test_another_tenants_endpoint_and_delivery_are_not_found(gql: GQL, services: Services) -> None:
    owner, pid = await owned_project(gql)
    hook = (await gql.ok(CREATE, new_endpoint(pid, "http://127.0.0.1:9/h"), token=owner.token))["createWebhookEndpoint"]
    hook_id = hook["endpoint"]["id"]
    delivery = (await gql.ok(TEST, {"e": hook_id}, token=owner.token))["sendTestWebhook"]
    stranger, their_pid = await owned_project(gql)
    made_up = ids.encode("webhook_endpoint", ids.uuid7())
    for query, variables in (
        (ONE, {"id": hook_id}),
        (UPDATE, {"i": {"id": hook_id, "description": "mine now"}}),
        (DELETE, {"id": hook_id}),
        (ROTATE, {"id": hook_id}),
        (TEST, {"e": hook_id}),
        (REDELIVER, {"d": delivery["id"]}),
        (LIST, {"p": pid}),
    ):
        theirs = await gql.error(query, variables, token=stranger.token)
        assert theirs["code"] == "NOT_FOUND", (query, theirs)
    # The same answer as for an id that does not exist.
    assert (await gql.error(ONE, {"id": made_up}, token=stranger.token))["message"] == (
        await gql.error(ONE, {"id": hook_id}, token=stranger.token)
    )["message"]
    # Their own project cannot host an endpoint moved from ours: ids are checked against the caller.
    assert (await gql.ok(LIST, {"p": their_pid}, token=stranger.token))["webhookEndpoints"]["edges"] == []
    # And nothing changed.
    assert (await gql.ok(ONE, {"id": hook_id}, token=owner.token))["webhookEndpoint"]["url"] == "http://127.0.0.1:9/h"


async def test_members_below_admin_are_refused_and_keys_need_the_scope(gql: GQL) -> None:
    owner, pid = await owned_project(gql)
    member = await add_member(gql, owner, pid, "MEMBER")
    refused = await gql.error(CREATE, new_endpoint(pid, "http://127.0.0.1:9/h"), token=member.token)
    assert refused["code"] == "FORBIDDEN"
    assert (await gql.error(LIST, {"p": pid}, token=member.token))["code"] == "FORBIDDEN"

    admin = await add_member(gql, owner, pid, "ADMIN")
    await gql.ok(CREATE, new_endpoint(pid, "http://127.0.0.1:9/admin"), token=admin.token)

    async def key(scopes: list[str]) -> str:
        i = {"projectId": pid, "name": "k", "scopes": scopes}
        secret: str = (await gql.ok(CREATE_KEY, {"i": i}, token=owner.token))["createApiKey"]["secret"]
        return secret

    writer = await key(["webhooks:write"])
    made = await gql.ok(CREATE, new_endpoint(pid, "http://127.0.0.1:9/key"), headers={"X-Api-Key": writer})
    assert made["createWebhookEndpoint"]["secret"].startswith("whsec_")
    reader = await key(["wallets:read", "billing:write"])
    no_scope = await gql.error(CREATE, new_endpoint(pid, "http://127.0.0.1:9/no"), headers={"X-Api-Key": reader})
    assert (no_scope["code"], no_scope["scope"]) == ("FORBIDDEN", "webhooks:write")
    listed = await gql.ok(LIST, {"p": pid}, headers={"X-Api-Key": writer})
    assert len(listed["webhookEndpoints"]["edges"]) == 2


async def test_endpoints_page_newest_first(gql: GQL) -> None:
    owner, pid = await owned_project(gql)
    made = []
    for n in range(3):
        created = await gql.ok(CREATE, new_endpoint(pid, f"http://127.0.0.1:9/{n}"), token=owner.token)
        made.append(created["createWebhookEndpoint"]["endpoint"]["id"])
    page1 = (await gql.ok(LIST, {"p": pid, "f": 2}, token=owner.token))["webhookEndpoints"]
    assert [e["node"]["id"] for e in page1["edges"]] == made[::-1][:2] and page1["pageInfo"]["hasNextPage"]
    page2 = (await gql.ok(LIST, {"p": pid, "f": 2, "a": page1["pageInfo"]["endCursor"]}, token=owner.token))[
        "webhookEndpoints"
    ]
    assert [e["node"]["id"] for e in page2["edges"]] == [made[0]] and not page2["pageInfo"]["hasNextPage"]
