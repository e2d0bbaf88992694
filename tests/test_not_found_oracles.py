"""No error tells "exists in another project" apart from "does not exist".

One test over every query and mutation that takes an id (found by introspection: ID-typed
arguments and input fields, at any depth), so a new field is covered without touching this file:
for each id position, the caller (a project owner, then an API key with every scope) sends
another tenant's real id of the right kind and a made-up id of the same kind, everything else
valid and its own; both answers must be the same error (code, message and field).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    get_named_type,
)

from ledgerx import ids
from ledgerx.graphql_schema import build_schema
from ledgerx.ids import uuid7
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, new_email, sign_up
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql
from tests.test_billing import CREATE_RULE, RUN
from tests.test_invites import CREATE_INVITE
from tests.test_ledger_api import CREDIT, new_wallet
from tests.test_usage_helpers import api_key, define

# Kinds whose ids name no tenant's object: the platform's catalog and inbox (plans, credit packs,
# Stripe events, reached by platform admins only or shared by every project). "Another tenant's"
# does not apply to them.
GLOBAL_KINDS = {"plan", "credit_pack", "coupon", "webhook_event", "tax_rate"}
# Argument and input-field names whose kind is plain; any other ID position (`id`, new names) is
# asked for its kind: a wrong prefix is answered "expected a <kind> id starting with <prefix>_".
NAMED_KINDS = {
    "projectId": "project",
    "walletId": "wallet",
    "fromWalletId": "wallet",
    "toWalletId": "wallet",
    "transactionId": "transaction",
    "userId": "user",
    "ownerUserId": "user",
    "planId": "plan",
    "creditPackId": "credit_pack",
    "appliesTo": "plan",  # plan or credit pack ids: global kinds either way
}
EXPECTED_PREFIX = re.compile(r"expected an? ([a-z ]+) id starting with ([a-z]+)_")
ALL_SCOPES = [
    "usage:write",
    "usage:read",
    "wallets:read",
    "wallets:write",
    "billing:read",
    "billing:write",
    "project:read",
]

Path = tuple[str, ...]


def _unwrap(t: Any) -> Any:
    while isinstance(t, (GraphQLNonNull, GraphQLList)):
        t = t.of_type
    return t


def _id_paths(args: dict[str, Any], prefix: Path = (), seen: tuple[str, ...] = ()) -> list[Path]:
    out: list[Path] = []
    for name, a in args.items():
        t = _unwrap(a.type)
        if isinstance(t, GraphQLScalarType) and t.name == "ID":
            out.append((*prefix, name))
        elif isinstance(t, GraphQLInputObjectType) and t.name not in seen:
            out += _id_paths(t.fields, (*prefix, name), (*seen, t.name))
    return out


class Caller:
    """Valid values for everything but the id under test, from the caller's own project."""

    def __init__(self, gql: GQL, token: str, own: dict[str, str]) -> None:
        self.gql = gql
        self.token = token
        self.own = own

    def scalar(self, name: str, t: GraphQLScalarType) -> Any:
        n = name.lower()
        if t.name == "ID":
            kind = NAMED_KINDS.get(name, "project")
            return self.own[kind] if kind in self.own else _random_id(kind)
        if t.name == "Boolean":
            return False
        if t.name in ("Int", "Float"):
            return 1
        if t.name in ("BigInt", "Decimal"):
            return "1"
        if t.name == "DateTime":
            at = dt.datetime.now(dt.UTC) + (dt.timedelta(hours=1) if n == "to" else -dt.timedelta(hours=1))
            return at.isoformat()
        if t.name == "JSON":
            return {}
        if "email" in n:
            return new_email("oracle")
        if "url" in n or "uri" in n:
            return "https://example.com/return"
        if n in ("metric", "metrickey"):
            return "api_calls"
        if n == "currency":
            return "USD"
        if n == "scopes":
            return "usage:read"
        if n in ("idempotencykey", "key", "externalkey", "code", "state", "token"):
            return "k" + secrets.token_hex(6)
        return "oracle"

    def value(self, name: str, t: Any, id_at: Path | None, target: str) -> Any:
        if isinstance(t, GraphQLNonNull):
            return self.value(name, t.of_type, id_at, target)
        if isinstance(t, GraphQLList):
            return [self.value(name, t.of_type, id_at, target)]
        if isinstance(t, GraphQLEnumType):
            return list(t.values)[-1]  # the last is the mildest in ours (a VIEWER role, not OWNER)
        if isinstance(t, GraphQLScalarType):
            return target if id_at == () else self.scalar(name, t)
        assert isinstance(t, GraphQLInputObjectType)
        out: dict[str, Any] = {}
        for fname, f in t.fields.items():
            on_path = id_at is not None and id_at[:1] == (fname,)
            if on_path or isinstance(f.type, GraphQLNonNull):
                out[fname] = self.value(fname, f.type, id_at[1:] if on_path and id_at else None, target)
        return out

    async def call(self, op: str, fname: str, field: GraphQLField, path: Path, target: str) -> dict[str, Any] | None:
        """The first error of `fname` with `target` at `path` (None when it succeeds)."""
        decls, args, variables = [], [], {}
        for i, (aname, a) in enumerate(field.args.items()):
            on_path = path[:1] == (aname,)
            if not (on_path or isinstance(a.type, GraphQLNonNull)):
                continue
            decls.append(f"$v{i}: {a.type}")
            args.append(f"{aname}: $v{i}")
            variables[f"v{i}"] = self.value(aname, a.type, path[1:] if on_path else None, target)
        ret = get_named_type(field.type)
        selection = " { __typename }" if isinstance(ret, GraphQLObjectType) or hasattr(ret, "fields") else ""
        doc = f"{op}({', '.join(decls)}) {{ {fname}({', '.join(args)}){selection} }}"
        body = await self.gql(doc, variables, token=self.token)
        if not body.get("errors"):
            return None
        err = body["errors"][0]
        ext = err.get("extensions") or {}
        return {"code": ext.get("code"), "message": err["message"], "field": ext.get("field")}


def _random_id(kind: str) -> str:
    return ids.encode(kind, uuid.UUID(int=(uuid.uuid4().int & ~(0xF << 76)) | (0x7 << 76)))


async def _kind_of(caller: Caller, op: str, fname: str, field: GraphQLField, path: Path) -> str | None:
    leaf = path[-1]
    if leaf in NAMED_KINDS:
        return NAMED_KINDS[leaf]
    err = await caller.call(op, fname, field, path, "zz_" + "0" * 26)
    m = EXPECTED_PREFIX.search((err or {}).get("message", ""))
    if m is None:
        return None
    kind = m.group(1).replace(" ", "_")
    assert ids.PREFIXES.get(kind) == m.group(2), m.group(0)
    return kind


async def _tenant(gql: GQL, settings: Settings) -> tuple[SignedIn, dict[str, str]]:
    """A project with one object of every tenant kind; returns its owner and the ids by kind."""
    owner = await sign_up(gql)
    project = await create_project(gql, owner)
    # An invoice (made by Stripe events elsewhere; written as its row here: no Stripe in this test).
    # OPEN, so unnumbered: it stays out of other tests' exports and sequences.
    invoice = uuid7()  # time-ordered, as the app makes them (listings are newest first by id)
    await owner_sql(
        settings,
        "INSERT INTO invoices (id, project_id, kind, status, currency, total, subtotal)"
        " VALUES ($1, $2, 'TOP_UP', 'OPEN', 'USD', 100, 100)",
        invoice,
        ids.decode("project", project),
    )
    await define(gql, owner, project, "api_calls")
    wallet = await new_wallet(gql, owner.token, project)
    credit = {"walletId": wallet, "amount": 100, "idempotencyKey": secrets.token_hex(8)}
    txn = (await gql.ok(CREDIT, {"i": credit}, token=owner.token))["creditWallet"]["id"]
    grant = await gql.ok(
        "mutation($i: GrantCreditsInput!) { grantCredits(input: $i) { id } }",
        {"i": {"walletId": wallet, "amount": 5, "idempotencyKey": secrets.token_hex(8)}},
        token=owner.token,
    )
    invite = {"projectId": project, "email": new_email("invitee"), "role": "MEMBER"}
    inv = (await gql.ok(CREATE_INVITE, {"i": invite}, token=owner.token))["createInvite"]["id"]
    key_data = await gql.ok(
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } } }",
        {"i": {"projectId": project, "name": "oracle", "scopes": ["usage:read"]}},
        token=owner.token,
    )
    rule_in = {"walletId": wallet, "name": "r", "mode": "DAILY_FLAT", "amount": 1}
    rule = (await gql.ok(CREATE_RULE, {"i": rule_in}, token=owner.token))["createBillingRule"]["id"]
    run = (await gql.ok(RUN, {"id": rule}, token=owner.token))["runBillingRule"]["id"]
    hook = await gql.ok(
        "mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { endpoint { id } } }",
        {"i": {"projectId": project, "url": "http://127.0.0.1:9/oracle", "events": ["*"]}},
        token=owner.token,
    )
    hook_id = hook["createWebhookEndpoint"]["endpoint"]["id"]
    test = await gql.ok(
        "mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }", {"e": hook_id}, token=owner.token
    )
    return owner, {
        "webhook_endpoint": hook_id,
        "webhook_delivery": test["sendTestWebhook"]["id"],
        "project": project,
        "wallet": wallet,
        "transaction": txn,
        "credit_grant": grant["grantCredits"]["id"],
        "invite": inv,
        "api_key": key_data["createApiKey"]["apiKey"]["id"],
        "rule": rule,
        "run": run,
        "user": owner.user_id,
        "invoice": ids.encode("invoice", invoice),
    }


async def test_another_tenants_ids_and_made_up_ids_get_the_same_error(gql: GQL, settings: Settings) -> None:
    schema = build_schema()._schema
    me, mine = await _tenant(gql, settings)
    _, theirs = await _tenant(gql, settings)
    secret = await api_key(gql, me, mine["project"], ALL_SCOPES)
    callers = {"owner": Caller(gql, me.token, mine), "api key": Caller(gql, secret, mine)}
    # Asks the kinds: a platform admin gets past the permission checks of admin-only fields.
    prober = Caller(gql, (await make_platform_admin(gql, settings)).token, mine)

    oracles: list[str] = []
    unknown: list[str] = []
    checked = not_found = 0
    for op, root in (("query", schema.query_type), ("mutation", schema.mutation_type)):
        assert root is not None
        for fname, field in root.fields.items():
            for path in _id_paths(field.args):
                where = f"{fname}({'.'.join(path)})"
                kind = await _kind_of(prober, op, fname, field, path)
                if kind is None:
                    unknown.append(where)
                    continue
                if kind in GLOBAL_KINDS:
                    continue
                assert kind in theirs, f"{where}: make the other tenant an object of kind {kind!r} in _tenant"
                for who, caller in callers.items():
                    foreign = await caller.call(op, fname, field, path, theirs[kind])
                    made_up = await caller.call(op, fname, field, path, _random_id(kind))
                    checked += 1
                    not_found += bool(made_up and made_up["code"] == "NOT_FOUND")
                    if foreign != made_up:
                        oracles.append(f"{who} {where}: another tenant's {kind} -> {foreign}; made up -> {made_up}")
    assert not unknown, f"cannot tell the id kind of {unknown}: add the name to NAMED_KINDS"
    assert not oracles, "\n".join(oracles)
    # The walk reached the schema's id-taking fields, and most answers came from the id lookup
    # (not from a refusal of the other arguments, which would make the comparison say nothing).
    assert checked > 100
    assert not_found > 0.7 * checked, (not_found, checked)
