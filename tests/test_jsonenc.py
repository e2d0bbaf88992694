"""Responses are encoded with orjson, falling back to `json` where orjson refuses (ledgerx/jsonenc.py)."""

from __future__ import annotations

import json

from ledgerx import jsonenc
from tests.conftest import GQL, sign_up
from tests.tenancy_helpers import create_project
from tests.test_ledger_api import key, new_wallet

CREDIT = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { amount metadata } }"


def test_what_orjson_refuses_is_still_encoded_exactly() -> None:
    assert jsonenc.dumps({"a": 10**20, "b": [1.5, "é", None]}) == '{"a":100000000000000000000,"b":[1.5,"é",null]}'
    assert json.loads(jsonenc.dumps({1: "x"})) == {"1": "x"}
    assert jsonenc.dumps({"amount": "12", "ok": True}) == '{"amount":"12","ok":true}'


async def test_metadata_with_a_huge_integer_comes_back_exactly(gql: GQL) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    wid = await new_wallet(gql, owner.token, pid)
    big = 123456789012345678901234567890
    data = await gql.ok(
        CREDIT,
        {"i": {"walletId": wid, "amount": "7", "idempotencyKey": key(), "metadata": {"n": big, "s": "ü"}}},
        token=owner.token,
    )
    assert gql.last is not None
    assert str(big) in gql.last.text  # not rounded through a float
    assert data["creditWallet"] == {"amount": "7", "metadata": {"n": big, "s": "ü"}}
