"""A database that refuses the request answers UNAVAILABLE (HTTP 503, Retry-After), not INTERNAL:
nothing ran, so clients (the SDKs included) may send the same request again."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy import exc as sa_exc

from ledgerx.app import create_app
from ledgerx.db import outage
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import free_port


@pytest.fixture
async def down(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its database on a port where nothing listens."""
    refused = dataclasses.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/ledgerx")
    svc = Services.build(refused)
    transport = httpx.ASGITransport(app=create_app(refused, svc), client=("203.0.113.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
    await svc.close()


async def test_graphql_answers_503_unavailable_with_retry_after(down: httpx.AsyncClient) -> None:
    r = await down.post(
        "/graphql",
        json={
            "query": "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
            "variables": {"i": {"email": "outage@example.com", "password": "a long enough password"}},
        },
    )
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    (error,) = r.json()["errors"]
    assert error["extensions"]["code"] == "UNAVAILABLE" and error["extensions"]["retryAfter"] == 1


async def test_http_routes_answer_503_unavailable(down: httpx.AsyncClient) -> None:
    # An API key is looked up in the database before anything else.
    key = "lx_" + "a" * 12 + "_" + "b" * 43  # well formed: only the database can tell it is unknown
    r = await down.post("/v1/usage", headers={"X-Api-Key": key}, json={"events": []})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "UNAVAILABLE"


async def test_graphql_with_an_api_key_answers_503_before_execution(down: httpx.AsyncClient) -> None:
    # The key is looked up while the request is authenticated, before GraphQL executes anything.
    key = "lx_" + "a" * 12 + "_" + "b" * 43
    r = await down.post("/graphql", headers={"Authorization": f"Bearer {key}"}, json={"query": "{ __typename }"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["errors"][0]["extensions"]["code"] == "UNAVAILABLE"


def test_only_refusals_before_any_statement_count() -> None:
    assert outage.refused(ConnectionRefusedError(111, "refused"))
    assert outage.refused(asyncpg.TooManyConnectionsError("sorry, too many clients already"))
    assert outage.refused(asyncpg.CannotConnectNowError("the database system is starting up"))
    assert outage.refused(asyncpg.ProtocolViolationError("query_wait_timeout"))  # PgBouncer's wait ran out
    wrapped = sa_exc.OperationalError("SELECT 1", {}, asyncpg.TooManyConnectionsError("too many"))
    assert outage.refused(wrapped)
    chained = RuntimeError("could not open a session")
    chained.__cause__ = ConnectionRefusedError(111, "refused")
    assert outage.refused(chained)
    # Lost mid-transaction: whether it committed is unknown, so it stays INTERNAL.
    assert not outage.refused(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert not outage.refused(asyncpg.UniqueViolationError("duplicate key"))
    assert not outage.refused(ValueError("bad"))
