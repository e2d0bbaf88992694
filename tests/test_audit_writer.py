"""The one audit writer: a row written through each form keeps the actor's client IP and request id."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from ledgerx import ids
from ledgerx.app import create_app
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor, RequestMeta
from ledgerx.domain.ledger import posting
from ledgerx.ids import uuid7
from ledgerx.services import Services
from tests.conftest import GQL, sign_up
from tests.ledger_helpers import new_project, new_wallet, owner_conn


def _actor(tag: str) -> Actor:
    return Actor("user", uuid7(), RequestMeta(request_id=f"req-{tag}-{uuid.uuid4().hex[:8]}", ip="198.51.100.23"))


async def _rows(services: Services, request_id: str) -> list[dict[str, object]]:
    conn = await owner_conn(services)
    try:
        rows = await conn.fetch(
            "SELECT project_id, actor_type, actor_id, action, target_type, target_id, before, after,"
            " request_id, host(ip) AS ip FROM audit_log WHERE request_id = $1 ORDER BY id",
            request_id,
        )
    finally:
        await conn.close()
    return [
        {**r, "before": r["before"] and json.loads(r["before"]), "after": r["after"] and json.loads(r["after"])}
        for r in map(dict, rows)
    ]


async def test_record_on_a_session_and_on_a_connection_keeps_ip_and_request_id(services: Services) -> None:
    pid = await new_project(services)
    by_session, by_conn = _actor("session"), _actor("conn")
    async with services.db.transaction(project_id=pid) as s:
        await audit.record(
            s, by_session, "thing.update", project_id=pid, target_type="thing", target_id="t1", before={"a": 1}
        )
    async with services.db.raw(project_id=pid) as conn:
        await audit.record(conn, by_conn, "thing.create", project_id=pid, target_type="thing", after={"b": "2"})

    [row] = await _rows(services, str(by_session.meta.request_id))
    assert row["ip"] == "198.51.100.23"
    assert (row["actor_type"], row["actor_id"], row["action"]) == ("user", by_session.id, "thing.update")
    assert (row["project_id"], row["target_type"], row["target_id"]) == (pid, "thing", "t1")
    assert row["before"] == {"a": 1} and row["after"] is None
    [row] = await _rows(services, str(by_conn.meta.request_id))
    assert row["ip"] == "198.51.100.23" and row["action"] == "thing.create" and row["after"] == {"b": "2"}


@pytest.mark.parametrize("scoped", [True, False])
async def test_record_is_part_of_the_callers_transaction(services: Services, scoped: bool) -> None:
    """Rolled back with the caller's change, also as the first statement of a transaction with
    nothing to scope (whose BEGIN the ORM has not sent yet)."""
    pid = await new_project(services)
    actor = _actor("rolled-back")

    async def abandoned() -> None:
        async with services.db.transaction(**({"project_id": pid} if scoped else {})) as s:
            await audit.record(s, actor, "thing.update", project_id=pid)
            raise RuntimeError("abandon")

    with pytest.raises(RuntimeError):
        await abandoned()
    assert await _rows(services, str(actor.meta.request_id)) == []
    # Committed, it is there.
    async with services.db.transaction(**({"project_id": pid} if scoped else {})) as s:
        await audit.record(s, actor, "thing.update", project_id=pid)
    assert len(await _rows(services, str(actor.meta.request_id))) == 1


async def test_record_many_writes_every_row_with_ip_and_request_id(services: Services) -> None:
    pid, other = await new_project(services), await new_project(services)
    actor = _actor("many")
    entries = [
        audit.Entry(actor, "billing_rule.pause", project_id=p, target_type="billing_rule", target_id=f"r{i}")
        for i, p in enumerate([pid, other, pid])
    ]
    async with services.db.transaction(system=True) as s:
        await audit.record_many(s, entries)
        await audit.record_many(s, [])  # nothing to write: no statement, no error
    rows = await _rows(services, str(actor.meta.request_id))
    assert [(r["project_id"], r["target_id"]) for r in rows] == [(pid, "r0"), (other, "r1"), (pid, "r2")]
    assert {r["ip"] for r in rows} == {"198.51.100.23"}


async def test_a_ledger_posting_audits_with_the_actors_ip_and_request_id(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    actor = _actor("ledger")
    done = await posting.credit_wallet(services.ledger, actor, w, 10, "c1")
    [row] = await _rows(services, str(actor.meta.request_id))
    assert row["ip"] == "198.51.100.23"
    assert (row["actor_type"], row["actor_id"], row["project_id"]) == ("user", actor.id, pid)
    assert row["target_type"] == "transaction" and row["target_id"] is not None
    assert done.transaction.amount == 10


async def test_a_peer_that_is_not_an_ip_is_audited_as_unknown_not_refused(services: Services) -> None:
    """A Unix-socket peer or an ASGI client named like starlette's "testclient" once turned a
    sign-up into INTERNAL (the inet column refused the name); now the request succeeds and the
    audit row's address is empty."""
    app = create_app(services.settings, services)
    transport = httpx.ASGITransport(app=app, client=("testclient", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        signed = await sign_up(GQL(c))
    conn = await owner_conn(services)
    try:
        row = await conn.fetchrow(
            "SELECT host(ip) AS ip FROM audit_log WHERE action = 'user.sign_up' AND actor_id = $1",
            ids.decode("user", signed.user_id),
        )
    finally:
        await conn.close()
    assert row is not None and row["ip"] is None
    assert RequestMeta(ip="/run/ledgerx.sock").ip is None and RequestMeta(ip="2001:db8::1").ip == "2001:db8::1"
