"""Money scalars accept exactly ASCII integers (BigInt) and plain ASCII decimals (Decimal).

Anything else (spaces, Unicode digits, exponents, NaN, booleans, floats for BigInt, values past
64 bits) is a clean BAD_USER_INPUT that writes nothing, whether it is sent as a variable or
written as a literal in the query text.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.conftest import GQL, sign_up
from tests.test_live_support import CREDIT, DEFINE_METRIC, LiveProject, live_project

BALANCE = "query($w: ID!) { wallet(id: $w) { balance } }"

BAD_BIGINTS: list[Any] = [
    " 5",
    "5 ",
    "\t5",
    "5\n",
    "٣",  # Arabic-Indic three
    "５",  # full-width five
    "𝟓",  # mathematical bold five
    "+5",
    "1_000",
    "1e3",
    "5.0",
    "0x10",
    "",
    "-",
    True,
    5.0,
    [5],
    {"n": 5},
    "9223372036854775808",  # 2^63
    9223372036854775808,
    "-9223372036854775809",
    "1" * 5000,  # longer than Python's int() accepts
]

BAD_DECIMALS: list[Any] = [
    " 1",
    "1 ",
    "١",  # Arabic-Indic one
    "０.５",  # full-width
    "1e3",
    "1E-2",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "1.",
    ".5",
    "1,5",
    "+1",
    "1_0",
    "",
    True,
    "1" * 200,
]


async def _project(gql: GQL) -> LiveProject:
    owner = await sign_up(gql)
    return await live_project(gql, owner, credit=100)


async def _balance(gql: GQL, p: LiveProject) -> str:
    data = await gql.ok(BALANCE, {"w": p.wallet_id}, token=p.owner.token)
    return str(data["wallet"]["balance"])


@pytest.mark.parametrize("amount", BAD_BIGINTS, ids=repr)
async def test_a_bigint_variable_is_ascii_digits_only(gql: GQL, amount: Any) -> None:
    p = await _project(gql)
    variables = {"i": {"walletId": p.wallet_id, "amount": amount, "idempotencyKey": secrets.token_hex(6)}}
    err = await gql.error(CREDIT, variables, token=p.owner.token)
    assert err["code"] == "BAD_USER_INPUT", err
    assert "BigInt" in err["message"]
    assert await _balance(gql, p) == "100"  # nothing written


@pytest.mark.parametrize("amount", ["5", 5, "0005", "9223372036854775807"])
async def test_a_bigint_variable_in_ascii_digits_is_accepted(gql: GQL, amount: Any) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=0)
    variables = {"i": {"walletId": p.wallet_id, "amount": amount, "idempotencyKey": secrets.token_hex(6)}}
    await gql.ok(CREDIT, variables, token=p.owner.token)
    assert await _balance(gql, p) == str(int(amount))


@pytest.mark.parametrize(
    "literal",
    [
        "9223372036854775808",  # 2^63 as an Int literal
        "-9223372036854775809",
        "99999999999999999999999999",
        '"9223372036854775808"',
        '" 5"',
        '"٣"',
        '"５"',
        "5.0",
        "1e3",
        "true",
    ],
)
async def test_a_bigint_literal_is_refused_like_a_variable(gql: GQL, literal: str) -> None:
    p = await _project(gql)
    key = secrets.token_hex(6)
    query = (
        f'mutation {{ creditWallet(input: {{walletId: "{p.wallet_id}", amount: {literal}, idempotencyKey: "{key}"}})'
        " { id } }"
    )
    err = await gql.error(query, token=p.owner.token)
    assert err["code"] == "BAD_USER_INPUT", err
    assert await _balance(gql, p) == "100"


async def test_an_out_of_range_literal_on_an_admin_mutation_is_bad_input_for_anyone(gql: GQL) -> None:
    """The document is invalid before anyone's permissions are looked at: anonymous and signed-in
    callers get BAD_USER_INPUT (not INTERNAL, not FORBIDDEN), exactly as with a variable."""
    literal = (
        'mutation { createCreditPack(input: {name: "big", credits: 9223372036854775808,'
        ' price: {amount: 100, currency: "USD"}}) { id } }'
    )
    variable = (
        'mutation($c: BigInt!) { createCreditPack(input: {name: "big", credits: $c,'
        ' price: {amount: 100, currency: "USD"}}) { id } }'
    )
    user = await sign_up(gql)
    for token in (None, user.token):
        lit = await gql.error(literal, token=token)
        assert lit["code"] == "BAD_USER_INPUT", lit
        assert "64-bit" in lit["message"]
        var = await gql.error(variable, {"c": "9223372036854775808"}, token=token)
        assert var["code"] == "BAD_USER_INPUT", var
        assert "64-bit" in var["message"]


@pytest.mark.parametrize("price", BAD_DECIMALS, ids=repr)
async def test_a_decimal_variable_is_a_plain_ascii_decimal(gql: GQL, price: Any) -> None:
    p = await _project(gql)
    key = f"m_{secrets.token_hex(3)}"
    i = {"projectId": p.project_id, "key": key, "name": key, "aggregation": "SUM", "unitPrice": price}
    err = await gql.error(DEFINE_METRIC, {"i": i}, token=p.owner.token)
    assert err["code"] == "BAD_USER_INPUT", err
    assert "Decimal" in err["message"]


@pytest.mark.parametrize(
    ("literal", "expected"),
    [("1e3", None), ('"١"', None), ('" 1"', None), ('"NaN"', None), ("0.25", "0.25"), ('"0.002"', "0.002"), ("3", "3")],
)
async def test_a_decimal_literal_is_read_exactly_or_refused(gql: GQL, literal: str, expected: str | None) -> None:
    p = await _project(gql)
    key = f"m_{secrets.token_hex(3)}"
    query = (
        f'mutation {{ defineMetric(input: {{projectId: "{p.project_id}", key: "{key}", name: "m", aggregation: SUM,'
        f" unitPrice: {literal}}}) {{ key unitPrice }} }}"
    )
    if expected is None:
        err = await gql.error(query, token=p.owner.token)
        assert err["code"] == "BAD_USER_INPUT", err
    else:
        data = await gql.ok(query, token=p.owner.token)
        assert data["defineMetric"]["unitPrice"] == expected


@pytest.mark.parametrize(("price", "expected"), [("0.002", "0.002"), ("-0", "0"), (2, "2"), (0.5, "0.5"), ("12", "12")])
async def test_a_decimal_in_ascii_or_a_json_number_is_accepted(gql: GQL, price: Any, expected: str) -> None:
    p = await _project(gql)
    key = f"m_{secrets.token_hex(3)}"
    i = {"projectId": p.project_id, "key": key, "name": key, "aggregation": "SUM", "unitPrice": price}
    q = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { unitPrice } }"
    data = await gql.ok(q, {"i": i}, token=p.owner.token)
    assert data["defineMetric"]["unitPrice"] == expected


SUMMARY = """query($i: UsageSummaryInput!) { usageSummary(input: $i) { bucket units } }"""


@pytest.mark.parametrize(
    ("start", "end"),
    [
        # Both overflow when shifted to UTC: INTERNAL before.
        ("0001-01-01T00:00:00+01:00", "0001-01-02T00:00:00+01:00"),
        ("9999-12-30T00:00:00Z", "9999-12-31T23:59:59-01:00"),
        ("1969-12-31T00:00:00Z", "1970-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00Z", "9000-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00Z", "not a date"),
        ("", "2026-01-01T00:00:00Z"),
    ],
)
async def test_a_datetime_outside_the_billing_calendar_is_bad_input(gql: GQL, start: str, end: str) -> None:
    p = await _project(gql)
    metric = {"projectId": p.project_id, "key": "calls", "name": "Calls", "aggregation": "SUM", "unitPrice": "1"}
    await gql.ok(DEFINE_METRIC, {"i": metric}, token=p.owner.token)
    good = {"projectId": p.project_id, "metricKey": "calls", "granularity": "DAY"}
    err = await gql.error(SUMMARY, {"i": {**good, "from": start, "to": end}}, token=p.owner.token)
    assert err["code"] == "BAD_USER_INPUT", err
    literal = (
        f'{{ usageSummary(input: {{projectId: "{p.project_id}", metricKey: "calls", granularity: DAY,'
        f' from: "{start}", to: "{end}"}}) {{ bucket }} }}'
    )
    err = await gql.error(literal, token=p.owner.token)
    assert err["code"] == "BAD_USER_INPUT", err


async def test_a_datetime_inside_the_calendar_is_accepted(gql: GQL) -> None:
    p = await _project(gql)
    await gql.ok(
        DEFINE_METRIC,
        {"i": {"projectId": p.project_id, "key": "calls", "name": "Calls", "aggregation": "SUM", "unitPrice": "1"}},
        token=p.owner.token,
    )
    data = await gql.ok(
        SUMMARY,
        {
            "i": {
                "projectId": p.project_id,
                "metricKey": "calls",
                "granularity": "DAY",
                "from": "1970-01-01T00:00:00Z",
                "to": "1970-01-03T00:00:00+00:00",
            }
        },
        token=p.owner.token,
    )
    assert [x["units"] for x in data["usageSummary"]] == ["0", "0"]
