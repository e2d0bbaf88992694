"""POST /v1/transactions: bulk posting over plain HTTP (an API key with `wallets:write`, or a
signed-in user), the same body and result as the `postTransactions` mutation.

Request: `Authorization: Bearer lx_…` (or `X-Api-Key`) and a JSON body
    {"atomic": false, "operations": [{"kind": "DEBIT", "walletId": "wal_…", "amount": "250",
      "idempotencyKey": "…", "toWalletId"?, "reason"?, "reference"?, "metadata"?}, …]}
with at most `LEDGER_MAX_BATCH` (1,000) operations. Amounts are integers or strings of digits,
as the API's BigInt.

Response 200: {"results": [{"index", "transaction": {…the Transaction's fields, as the
`transaction.posted` webhook writes them…} | null, "replayed", "error": {"code", "message",
"field"} | null}, …]} (domain/ledger/bulk.py decides them). Errors as /v1/usage's: 400
BAD_USER_INPUT (a bad body; too many operations), 401, 413 (a body past LEDGER_MAX_BODY_BYTES),
429 (the gateway's bucket, Retry-After).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ledgerx.domain.actor import Actor, RequestMeta
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import AppError, BadInput, Unauthenticated
from ledgerx.domain.ledger import bulk, payloads, policy
from ledgerx.domain.ledger.types import MAX_BIGINT
from ledgerx.domain.tenancy.authorize import Authorizer, check_key_scope
from ledgerx.http import edge, jsonbody
from ledgerx.http.edge import error_response, json_response
from ledgerx.logs import request_id_var
from ledgerx.services import Services

# 1,000 operations of a few hundred bytes each, with room for metadata.
MAX_BODY_BYTES = 8 * 1024 * 1024
_FIELDS = ("kind", "walletId", "amount", "idempotencyKey", "toWalletId", "reason", "reference", "metadata")


def transactions_endpoint(services: Callable[[], Services]) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint; like /graphql and /v1/usage, one token of the caller's gateway
    bucket is spent before any work (http/edge.py)."""

    async def post_transactions(request: Request) -> Response:
        svc = services()

        async def handle(principal: Principal | None, auth_error: AppError | None) -> Response:
            if principal is None:
                return error_response(auth_error or Unauthenticated("missing credentials"))
            try:
                return await _post(svc, principal, request)
            except AppError as exc:
                return error_response(exc)

        return await edge.admitted(svc, request, handle)

    return post_transactions


async def _post(svc: Services, principal: Principal, request: Request) -> Response:
    check_key_scope(principal, policy.WRITE)  # before reading a body that would be refused anyway
    try:
        raw = await jsonbody.read_body(request, MAX_BODY_BYTES)
        payload = jsonbody.loads(raw)
    except ClientDisconnect:
        return Response(status_code=400)
    except jsonbody.BodyError as exc:
        if exc.status == 413:
            return error_response(BadInput(f"{exc.message}; split the batch", field="operations"), 413)
        raise BadInput(f'{exc.message} (expected {{"operations": [...]}})', field=exc.field or "operations") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("operations"), list):
        raise BadInput("the body must be a JSON object with an operations list", field="operations")
    atomic = payload.get("atomic", False)
    if not isinstance(atomic, bool):
        raise BadInput("atomic must be true or false", field="atomic")
    listed: list[Any] = payload["operations"]
    bulk.check_size(len(listed), svc.settings.ledger_max_batch)
    operations = [_operation(item, i) for i, item in enumerate(listed)]
    client = request.client.host if request.client else None
    meta = RequestMeta(request_id=request_id_var.get(), ip=client, user_agent=request.headers.get("user-agent"))
    actor = Actor.of(principal, meta)
    results = await bulk.post_operations(
        svc.ledger,
        actor,
        Authorizer(svc.db, svc.access_cache, principal),
        operations,
        atomic=atomic,
        max_batch=svc.settings.ledger_max_batch,
    )
    return json_response(200, {"results": [_result(r) for r in results]})


def _operation(item: Any, i: int) -> bulk.Operation:
    """The body's shape is checked here, as GraphQL's validation does for the mutation; what a
    well-formed operation means (wallets, amounts, keys) is the domain's, per operation."""
    at = f"operations[{i}]"
    if not isinstance(item, dict):
        raise BadInput("each operation must be a JSON object", field=at)
    unknown = sorted(set(item) - set(_FIELDS))
    if unknown:
        raise BadInput(f"unknown field {unknown[0]!r}", field=f"{at}.{unknown[0]}")
    try:
        kind = bulk.OperationKind(str(item.get("kind")))
    except ValueError:
        raise BadInput("kind must be CREDIT, DEBIT or TRANSFER", field=f"{at}.kind") from None
    for name in ("walletId", "idempotencyKey"):
        if not isinstance(item.get(name), str):
            raise BadInput(f"{name} must be a string", field=f"{at}.{name}")
    for name in ("toWalletId", "reason", "reference"):
        if item.get(name) is not None and not isinstance(item[name], str):
            raise BadInput(f"{name} must be a string", field=f"{at}.{name}")
    return bulk.Operation(
        kind=kind,
        wallet_id=item["walletId"],
        amount=_amount(item.get("amount"), f"{at}.amount"),
        idempotency_key=item["idempotencyKey"],
        to_wallet_id=item.get("toWalletId"),
        reason=item.get("reason"),
        reference=item.get("reference"),
        metadata=item.get("metadata"),
    )


def _amount(value: Any, field: str) -> int:
    """BigInt as the API takes it: an integer, or a string of digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit() and len(value) <= 20:
        number = int(value)
    else:
        raise BadInput("amount must be an integer or a string of digits", field=field)
    if abs(number) > MAX_BIGINT:
        raise BadInput("amount is out of range", field=field)
    return number


def _result(r: bulk.OperationResult) -> dict[str, Any]:
    error = None
    if r.error is not None:
        error = {"code": r.error.code, "message": r.error.message, "field": r.error.field}
    return {
        "index": r.index,
        "transaction": None if r.posted is None else payloads.transaction(r.posted.transaction),
        "replayed": bool(r.posted and r.posted.replayed),
        "error": error,
    }
