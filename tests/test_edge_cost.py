"""Query cost: documents are refused by what they expand to, before validation or execution."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
from graphql import parse

from ledgerx.app import create_app
from ledgerx.graphql_schema import build_schema
from ledgerx.services import Services
from tests.conftest import GQL, sign_up

ROOT = Path(__file__).resolve().parent.parent


def doubling_fragments(levels: int) -> str:
    """Each fragment spreads the next one twice: `levels` fragments stand for 2^levels fields."""
    spreads = "\n".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels))
    return f"query {{ ...F0 }}\n{spreads}\nfragment F{levels} on Query {{ version }}"


async def test_a_fragment_bomb_is_refused_for_anonymous_and_signed_in_callers(gql: GQL) -> None:
    bomb = doubling_fragments(20)  # under 1 KB of text, 2^20 fields once expanded
    assert len(bomb) < 1500
    user = await sign_up(gql)
    for token in (None, user.token):
        body = await gql(bomb, token=token)
        assert body.get("data") is None, "the document must not execute"
        err = body["errors"][0]
        assert err["extensions"]["code"] == "BAD_USER_INPUT"
        assert err["extensions"]["cost"] == 2**20
        assert err["extensions"]["maxCost"] == 20_000
        assert "too expensive" in err["message"]


async def test_pages_multiply_what_is_under_them(services: Services) -> None:
    s = dataclasses.replace(services.settings, graphql_max_cost=100)
    transport = httpx.ASGITransport(app=create_app(s, services))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        g = GQL(c)
        user = await sign_up(g)
        # projects: 1, plus the page times (edges, node, id, name, externalKey).
        small = "{ projects(first: 5) { edges { node { id name externalKey } } } }"
        assert (await g.ok(small, token=user.token))["projects"]["edges"] == []
        err = await g.error(small.replace("first: 5", "first: 100"), token=user.token)
        assert (err["code"], err["cost"], err["maxCost"]) == ("BAD_USER_INPUT", 501, 100)
        # Without `first` the schema's default page (20) counts; a variable counts as the largest page.
        default_page = "{ projects { edges { node { id name externalKey } } } }"
        assert (await g.error(default_page, token=user.token))["cost"] == 101
        variable = "query($n: Int) { projects(first: $n) { edges { node { id name externalKey } } } }"
        assert (await g.error(variable, {"n": 1}, token=user.token))["cost"] == 501


def test_cost_is_linear_and_survives_chains_and_cycles() -> None:
    from ledgerx.schema.cost import SATURATED, document_cost

    schema = build_schema()._schema
    # 600 chained fragments: far past any limit, counted without recursion or huge integers.
    assert document_cost(schema, parse(doubling_fragments(600))) == SATURATED
    # A cycle counts nothing (validation reports it); unknown fields and fragments count once.
    cyclic = "query { ...A } fragment A on Query { version ...B } fragment B on Query { ...A }"
    assert document_cost(schema, parse(cyclic)) == 1
    assert document_cost(schema, parse("{ nope { deeper { still } } ...Missing }")) == 3
