"""Schemathesis hooks for fuzzing LedgerX's GraphQL schema (loaded by scripts/fuzz_schema.py).

Loaded through `SCHEMATHESIS_HOOKS=fuzz_schema_hooks` with `scripts/` on PYTHONPATH. It gives the
generator strategies for our custom scalars (without them schemathesis skips every operation that
takes one), makes `ID` arguments mostly well-formed typed ids (`wal_…`, `prj_…`) and often the real
ids of the fuzzing user's project, so resolvers get past id parsing and into the domain code, and
adds the one check that matters here: no 5xx and no error whose `extensions.code` is `INTERNAL`.

Environment (set by scripts/fuzz_schema.py):
- FUZZ_KNOWN: JSON {"ids": [...], "strings": [...], "by_name": {argument: [...]}}: real ids and
  values (metric keys, emails) to mix in; ids go to the arguments of their kind (projectId: prj_…).
- FUZZ_FAILURES: a file where every failing request is appended as one JSON line.
- FUZZ_MODE: a label ("user", "anonymous") written into each failure line.
- FUZZ_LOGIN: JSON {"url", "email", "password"}: when set, requests carry a fresh access token
  (logged in again every 5 minutes, so long runs outlive ACCESS_TOKEN_TTL).
"""

from __future__ import annotations

import json
import os
import string
import threading
from typing import Any

import graphql
import httpx
import schemathesis
from hypothesis import strategies as st
from schemathesis.graphql import nodes

_KNOWN: dict[str, list[str]] = json.loads(os.environ.get("FUZZ_KNOWN") or "{}")
_FAILURES = os.environ.get("FUZZ_FAILURES")
_MODE = os.environ.get("FUZZ_MODE", "?")
_LOCK = threading.Lock()

# ledgerx/ids.py PREFIXES, repeated so the hooks import nothing from the server.
_PREFIXES = (
    "usr", "prj", "mem", "inv", "key", "wal", "txn", "ent", "evt", "rul",
    "run", "met", "pln", "pck", "pay", "ivc", "sub", "whe", "aud",
)  # fmt: skip
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _weighted(*pairs: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A choice among strategies with weights (st.one_of would ignore a repeated branch)."""
    return st.sampled_from([s for n, s in pairs for _ in range(n)]).flatmap(lambda s: s)


# Strings that broke or may break a layer below GraphQL: NUL (PostgreSQL text), a lone surrogate
# (UTF-8 encoding), huge, SQL/format/path noise, bidi controls, non-ASCII digits.
_NASTY = st.sampled_from(
    [
        "\x00",
        "a\x00b",
        "\ud800",
        "x" * 10_000,
        "' OR 1=1 --",
        "%s%n%x",
        "{0}{1}",
        "../../etc/passwd",
        "\u202etxt.exe",
        "\u0663",
        "\uff15",
        "\U0001f600" * 50,
        " ",
        "\r\n",
    ]
)


# --- IDs -------------------------------------------------------------------------------------

_well_formed_id = st.builds(
    lambda p, body: f"{p}_{body}",
    st.sampled_from(_PREFIXES),
    st.text(alphabet=_CROCKFORD, min_size=26, max_size=26),
)
_id_values = [
    (1, st.text(max_size=40)),
    (1, _NASTY),
    (3, _well_formed_id),
    (1, st.builds(lambda p, t: f"{p}_{t}", st.sampled_from(_PREFIXES), st.text(max_size=30))),
]
if _KNOWN.get("ids"):
    _id_values.append((5, st.sampled_from(_KNOWN["ids"])))
schemathesis.graphql.scalar("ID", _weighted(*_id_values).map(nodes.String))

# --- String: mostly any text, sometimes a value that exists (a metric key, a member's email) --

_string_values = [(4, st.text(max_size=60)), (1, _NASTY)]
if _KNOWN.get("strings"):
    _string_values.append((2, st.sampled_from(_KNOWN["strings"])))
schemathesis.graphql.scalar("String", _weighted(*_string_values).map(nodes.String))

# --- BigInt: in range mostly; the edges; past 64 bits; odd text ---------------------------------

_int64 = st.integers(INT64_MIN, INT64_MAX)
_bigint_edges = st.sampled_from([0, 1, -1, INT64_MAX, INT64_MIN, 2**31, 2**53 + 1])
_bigint = _weighted(
    (4, st.integers(-(10**6), 10**9).map(nodes.Int)),
    (2, _int64.map(nodes.Int)),
    (2, _bigint_edges.map(nodes.Int)),
    (2, st.one_of(_int64, _bigint_edges).map(str).map(nodes.String)),
    (1, st.integers(INT64_MAX + 1, 2**80).map(nodes.Int)),
    (1, st.integers(INT64_MAX + 1, 2**80).map(str).map(nodes.String)),
    (1, st.text(max_size=20).map(nodes.String)),
    (1, st.sampled_from([" 5", "\u0663", "\uff15", "1e3", "1.5", "-0", "+7", "0x10", "1_000"]).map(nodes.String)),
)
schemathesis.graphql.scalar("BigInt", _bigint)

# --- Decimal: plain decimals as strings and literals; huge, tiny, odd ---------------------------

_plain_decimal = st.builds(
    lambda sign, whole, frac: f"{sign}{whole}" + (f".{frac}" if frac else ""),
    st.sampled_from(["", "-"]),
    st.integers(0, 10**12),
    st.one_of(st.just(""), st.text(alphabet=string.digits, min_size=1, max_size=12)),
)
_decimal = _weighted(
    (4, _plain_decimal.map(nodes.String)),
    (2, st.integers(-(10**9), 10**9).map(nodes.Int)),
    (2, st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float)),
    (1, st.builds(lambda n: "9" * n, st.integers(20, 70)).map(nodes.String)),
    (1, st.text(max_size=20).map(nodes.String)),
    (1, st.sampled_from(["NaN", "Infinity", "1e5", " 1", "\u0661", "0.0000000000000000000001"]).map(nodes.String)),
)
schemathesis.graphql.scalar("Decimal", _decimal)

# --- DateTime: ISO instants (with and without zone), the calendar's edges, junk ----------------

_iso = st.datetimes(timezones=st.sampled_from([None, __import__("datetime").UTC])).map(
    lambda d: d.isoformat().replace("+00:00", "Z")
)
_DATETIME_EDGES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-01:00",
    "1970-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
]
_datetime = _weighted(
    (4, _iso.map(nodes.String)),
    # The ends of Python's datetime range: shifting them overflows, and the exact minimum and
    # maximum reach PostgreSQL as -infinity/infinity (asyncpg's mapping).
    (2, st.sampled_from(_DATETIME_EDGES).map(nodes.String)),
    (1, st.text(max_size=30).map(nodes.String)),
    (1, st.integers().map(nodes.Int)),
)
schemathesis.graphql.scalar("DateTime", _datetime)

# --- JSON: any JSON value written as a GraphQL literal ------------------------------------------


def _json_node(value: Any) -> graphql.ValueNode:
    if value is None:
        return nodes.Null
    if isinstance(value, bool):
        return nodes.Boolean(value)
    if isinstance(value, int):
        return nodes.Int(value)
    if isinstance(value, float):
        return nodes.Float(value)
    if isinstance(value, str):
        return nodes.String(value)
    if isinstance(value, list):
        return nodes.List([_json_node(v) for v in value])
    fields = [graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=_json_node(v)) for k, v in value.items()]
    return nodes.Object(fields)


_json_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_json_keys, inner, max_size=4),
    max_leaves=12,
)
schemathesis.graphql.scalar("JSON", _json_values.map(_json_node))

# --- Real values by argument name ---------------------------------------------------------------
# A scalar strategy does not know which argument it fills, so a random id rarely names the right
# kind of object and resolvers stop at NOT_FOUND. This body hook puts, in most generated queries,
# a real id of the kind the argument takes (projectId -> the project) and a real metric key,
# time zone or idempotency key, so the domain code behind each operation gets exercised.

_BY_PREFIX: dict[str, list[str]] = {}
for _known_id in _KNOWN.get("ids", []):
    _BY_PREFIX.setdefault(_known_id.split("_", 1)[0], []).append(_known_id)
_ARG_KIND = {
    "projectId": "prj",
    "walletId": "wal",
    "fromWalletId": "wal",
    "toWalletId": "wal",
    "transactionId": "txn",
    "userId": "usr",
    "ownerUserId": "usr",
    "ruleId": "rul",
    "planId": "pln",
    "creditPackId": "pck",
}
# For an argument named `id`, the kind follows the root field (first match wins).
_ID_KIND = [
    ("BillingRun", "run"),
    ("billingRun", "run"),
    ("BillingRule", "rul"),
    ("billingRule", "rul"),
    ("ApiKey", "key"),
    ("Invite", "inv"),
    ("CreditPack", "pck"),
    ("Plan", "pln"),
    ("WebhookEvent", "whe"),
    ("webhookEvent", "whe"),
    ("Wallet", "wal"),
    ("wallet", "wal"),
    ("ransaction", "txn"),
    ("Project", "prj"),
    ("project", "prj"),
]
_BY_NAME: dict[str, list[str]] = dict(_KNOWN.get("by_name", {}))


def _pick(options: list[str], seed: str) -> str | None:
    # Deterministic in the generated value (hypothesis maps must be), yet spread: 3 in 4 replaced.
    h = sum(map(ord, seed)) * 2654435761
    return options[h % len(options)] if options and h % 4 else None


def _real_value(name: str, root: str, current: str) -> str | None:
    kind = _ARG_KIND.get(name)
    if name == "id":
        kind = next((k for marker, k in _ID_KIND if marker in root), None)
    if kind:
        return _pick(_BY_PREFIX.get(kind, []), current + name)
    return _pick(_BY_NAME.get(name, []), current + name)


def _rewrite(node: Any, name: str, root: str) -> Any:
    if isinstance(node, graphql.StringValueNode):
        value = _real_value(name, root, node.value)
        return node if value is None else graphql.StringValueNode(value=value)
    if isinstance(node, graphql.ObjectValueNode):
        fields = [
            graphql.ObjectFieldNode(name=f.name, value=_rewrite(f.value, f.name.value, root)) for f in node.fields
        ]
        return graphql.ObjectValueNode(fields=tuple(fields))
    if isinstance(node, graphql.ListValueNode):
        return graphql.ListValueNode(values=tuple(_rewrite(v, name, root) for v in node.values))
    return node


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    if not isinstance(body, graphql.DocumentNode) or not (_BY_PREFIX or _BY_NAME):
        return body
    definitions = []
    for op in body.definitions:
        if isinstance(op, graphql.OperationDefinitionNode):
            selections = []
            for sel in op.selection_set.selections:
                if isinstance(sel, graphql.FieldNode) and sel.arguments:
                    args = tuple(
                        graphql.ArgumentNode(name=a.name, value=_rewrite(a.value, a.name.value, sel.name.value))
                        for a in sel.arguments
                    )
                    sel = graphql.FieldNode(
                        alias=sel.alias,
                        name=sel.name,
                        arguments=args,
                        directives=sel.directives,
                        selection_set=sel.selection_set,
                    )
                selections.append(sel)
            op = graphql.OperationDefinitionNode(
                operation=op.operation,
                name=op.name,
                variable_definitions=op.variable_definitions,
                directives=op.directives,
                selection_set=graphql.SelectionSetNode(selections=tuple(selections)),
            )
        definitions.append(op)
    return graphql.DocumentNode(definitions=tuple(definitions))


# --- Authentication: a fresh access token for the fuzzing user ----------------------------------

_LOGIN = json.loads(os.environ.get("FUZZ_LOGIN") or "null")

if _LOGIN:

    @schemathesis.auth(refresh_interval=300)
    class _UserToken:
        def get(self, case: Any, ctx: Any) -> str:
            r = httpx.post(
                _LOGIN["url"],
                json={
                    "query": "mutation($i: LogInInput!) { logIn(input: $i) { accessToken } }",
                    "variables": {"i": {"email": _LOGIN["email"], "password": _LOGIN["password"]}},
                },
                timeout=30,
            )
            token: str = r.json()["data"]["logIn"]["accessToken"]
            return token

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = case.headers or {}
            case.headers["Authorization"] = f"Bearer {data}"


# --- The check: no 5xx, no INTERNAL ---------------------------------------------------------------


def _record(case: Any, status: int, errors: list[Any]) -> None:
    if not _FAILURES:
        return
    body = case.body if isinstance(case.body, dict) else {"query": str(case.body)}
    line = {
        "mode": _MODE,
        "operation": case.operation.label,
        "status": status,
        "query": body.get("query"),
        "variables": body.get("variables"),
        "errors": errors,
    }
    with _LOCK, open(_FAILURES, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, default=str) + "\n")


@schemathesis.check
def no_internal_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx, or an error with extensions.code INTERNAL, is a server bug whatever the input was."""
    if response.status_code >= 500:
        _record(case, response.status_code, [{"message": response.text[:300]}])
        raise AssertionError(f"HTTP {response.status_code}")
    try:
        payload = response.json()
    except ValueError:
        return None
    errors = payload.get("errors") if isinstance(payload, dict) else None
    internal = [
        e for e in errors or [] if isinstance(e, dict) and (e.get("extensions") or {}).get("code") == "INTERNAL"
    ]
    if internal:
        _record(case, response.status_code, internal)
        raise AssertionError(f"INTERNAL: {internal[0].get('message')}")
    return None
