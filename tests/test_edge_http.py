"""The /graphql HTTP edge: bodies, request errors per GraphQL over HTTP, text PostgreSQL can store,
suggestions without introspection."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ledgerx.app import create_app
from ledgerx.services import Services
from tests.conftest import GQL, sign_up

GQL_RESPONSE = "application/graphql-response+json"


async def post_raw(client: httpx.AsyncClient, body: bytes, accept: str = "application/json") -> httpx.Response:
    return await client.post("/graphql", content=body, headers={"content-type": "application/json", "accept": accept})


async def test_syntax_errors_carry_bad_user_input(client: httpx.AsyncClient) -> None:
    r = await post_raw(client, json.dumps({"query": "{ version"}).encode())
    assert r.status_code == 200
    err = r.json()["errors"][0]
    assert err["message"].startswith("Syntax Error")
    assert err["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize(
    ("document", "variables"),
    [
        ("{ version", None),  # does not parse
        ("{ nope }", None),  # does not validate
        ("query($n: Int!) { projects(first: $n) { edges { cursor } } }", {"n": "many"}),  # variables do not coerce
    ],
)
async def test_request_errors_are_400_when_asking_for_graphql_response_json(
    client: httpx.AsyncClient, document: str, variables: dict[str, Any] | None
) -> None:
    body = json.dumps({"query": document, "variables": variables}).encode()
    r = await post_raw(client, body, GQL_RESPONSE)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith(GQL_RESPONSE)
    answer = r.json()
    assert "data" not in answer
    assert answer["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    # application/json keeps the 200 the specification asks for there.
    legacy = await post_raw(client, body)
    assert legacy.status_code == 200
    assert legacy.json()["errors"]


async def test_field_errors_stay_200_with_data(client: httpx.AsyncClient) -> None:
    r = await post_raw(client, json.dumps({"query": "{ me { id } }"}).encode(), GQL_RESPONSE)
    assert r.status_code == 200
    assert "data" in r.json()
    assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "body",
    [b"null", b'"a bare string"', b"42", b"[]", b"[" * 50_000 + b"]" * 50_000, b'{"query": 5}', b"{not json"],
)
async def test_unusable_bodies_are_clean_400s(client: httpx.AsyncClient, body: bytes) -> None:
    r = await post_raw(client, body)
    assert r.status_code == 400
    assert r.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_the_body_is_capped_without_reading_past_the_cap(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The view reads its limits from the services' settings.
    s = dataclasses.replace(services.settings, graphql_max_body=64 * 1024)
    monkeypatch.setattr(services, "settings", s)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"query": "{ version }", "padding": "'
        for _ in range(2_000):  # 128 MB if it were all read
            sent += 1
            yield b"x" * 65_536
        yield b'"}'

    transport = httpx.ASGITransport(app=create_app(s, services))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.post("/graphql", content=endless(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert r.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert sent <= 3, f"read {sent} chunks of 64 KB past a 64 KB cap"
        declared = await c.post(
            "/graphql", content=b" " * (64 * 1024 + 1), headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert (await c.post("/graphql", json={"query": "{ version }"})).status_code == 200


async def test_a_lone_surrogate_is_bad_input_not_internal(client: httpx.AsyncClient) -> None:
    login = 'mutation($e: String!) { logIn(input: {email: $e, password: "a long passphrase"}) { accessToken } }'
    # json.dumps escapes the surrogate as \\ud800, as a client's JSON encoder would.
    r = await post_raw(client, json.dumps({"query": login, "variables": {"e": "ada\ud800@example.com"}}).encode())
    err = r.json()["errors"][0]
    assert err["extensions"] == {"code": "BAD_USER_INPUT", "field": "e"}
    assert "surrogate" in err["message"]


async def test_nul_is_refused_once_at_the_edge(gql: GQL) -> None:
    # Anonymous: a variable and a literal.
    login = "mutation($i: LogInInput!) { logIn(input: $i) { accessToken } }"
    err = await gql.error(login, {"i": {"email": "a\x00@example.com", "password": "a long passphrase"}})
    assert err["code"] == "BAD_USER_INPUT"
    assert err["field"] == "email"
    assert "$i.email" in err["message"]
    assert "NUL" in err["message"]
    err = await gql.error(
        'mutation { logIn(input: {email: "a\\u0000@example.com", password: "pw pw pw pw"}) { accessToken } }'
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "email")

    # Signed in: names, external keys, idempotency keys.
    user = await sign_up(gql)
    create = "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }"
    for field in ("name", "externalKey"):
        values = {"name": "Acme", "externalKey": "acme-nul", field: "bad\x00value"}
        err = await gql.error(create, {"i": values}, token=user.token)
        assert (err["code"], err["field"]) == ("BAD_USER_INPUT", field), err
    project = (await gql.ok(create, {"i": {"name": "Acme"}}, token=user.token))["createProject"]["id"]
    wallet = (
        await gql.ok(
            "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
            {"i": {"projectId": project, "name": "Main"}},
            token=user.token,
        )
    )["createWallet"]["id"]
    credit = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }"
    err = await gql.error(
        credit, {"i": {"walletId": wallet, "amount": "5", "idempotencyKey": "k\x00"}}, token=user.token
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "idempotencyKey")
    # Nothing was written.
    balance = await gql.ok("query($id: ID!) { wallet(id: $id) { balance } }", {"id": wallet}, token=user.token)
    assert balance["wallet"]["balance"] == "0"


async def test_usage_ingestion_refuses_nul_and_surrogates_with_the_same_reader(
    gql: GQL, client: httpx.AsyncClient
) -> None:
    user = await sign_up(gql)
    project = (
        await gql.ok(
            "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
            {"i": {"name": "Usage"}},
            token=user.token,
        )
    )["createProject"]["id"]
    headers = {"authorization": f"Bearer {user.token}", "content-type": "application/json"}
    for bad in ("key\x00", "key\ud800"):
        event = {"metricKey": "api_calls", "units": 1, "idempotencyKey": bad}
        body = json.dumps({"projectId": project, "events": [{"metricKey": "api_calls", "units": 1}, event]})
        r = await client.post("/v1/usage", content=body.encode(), headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "BAD_USER_INPUT"
        assert r.json()["error"]["field"] == "events.1.idempotencyKey"
    deep = b'{"events": [{"properties": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}"
    r = await client.post("/v1/usage", content=deep, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "BAD_USER_INPUT"


async def test_no_suggestions_without_introspection(services: Services) -> None:
    # Production turns introspection off; suggestions would spell the schema out anyway.
    s = dataclasses.replace(services.settings, graphql_introspection=False)
    transport = httpx.ASGITransport(app=create_app(s, services))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        g = GQL(c)
        probes = [
            ("{ walet(id: 1) { id } }", None),
            ('mutation { logIn(input: {emial: "a@b.co", password: "x"}) { accessToken } }', None),
            (
                "mutation($i: LogInInput!) { logIn(input: $i) { accessToken } }",
                {"i": {"emial": "a@b.co", "password": "x", "email": "a@b.co"}},
            ),
        ]
        for document, variables in probes:
            err = await g.error(document, variables)
            assert err["code"] == "BAD_USER_INPUT"
            assert "Did you mean" not in err["message"], err["message"]
    # With introspection on (development), the suggestions help.
    transport = httpx.ASGITransport(app=create_app(services.settings, services))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert "Did you mean" in (await GQL(c).error("{ walet(id: 1) { id } }"))["message"]
