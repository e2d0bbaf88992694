"""Error shaping: stable `extensions.code` on every error, unexpected ones masked with a request id."""

from __future__ import annotations

import logging
from typing import Any

from graphql.error import GraphQLError

from ledgerx import metrics
from ledgerx.domain.errors import AppError, RateLimited, Unavailable

log = logging.getLogger("ledgerx.graphql")

# Errors that make the whole GraphQL response answer with their HTTP status and Retry-After, so
# clients and proxies back off without reading the body.
_STATUS = {RateLimited.code: RateLimited.http_status, Unavailable.code: Unavailable.http_status}


def shape(error: GraphQLError, context: Any) -> GraphQLError:
    original = error.original_error
    request_id = getattr(context, "request_id", None)
    if isinstance(original, AppError):
        ext = original.extensions
        metrics.GRAPHQL_ERRORS.labels(ext["code"]).inc()
        return GraphQLError(original.message, error.nodes, error.source, error.positions, error.path, None, ext)
    if original is None or isinstance(original, GraphQLError):
        # Parse, validation and variable-coercion errors (graphql-core wraps the coercion error of
        # a nested input field in another GraphQLError): the request itself is bad input.
        ext = dict(error.extensions or {})
        ext.setdefault("code", "BAD_USER_INPUT")
        metrics.GRAPHQL_ERRORS.labels(ext["code"]).inc()
        return GraphQLError(error.message, error.nodes, error.source, error.positions, error.path, None, ext)
    unavailable = Unavailable.of(original)
    if unavailable is not None:
        log.warning("database unavailable: %s", original)
        return shape(
            GraphQLError(error.message, error.nodes, error.source, error.positions, error.path, unavailable), context
        )
    metrics.GRAPHQL_ERRORS.labels("INTERNAL").inc()
    log.error(
        "unexpected error in resolver",
        exc_info=(type(original), original, original.__traceback__),
        extra={"path": error.path},
    )
    return GraphQLError(
        f"Internal error (request id {request_id})",
        error.nodes,
        error.source,
        error.positions,
        error.path,
        None,
        {"code": "INTERNAL", "requestId": request_id},
    )


def status_headers(errors: list[GraphQLError], ctx: Any) -> None:
    response = getattr(ctx, "response", None)
    if response is None:
        return
    for e in errors:
        code = (e.extensions or {}).get("code")
        if code in _STATUS:
            response.headers["Retry-After"] = str((e.extensions or {}).get("retryAfter", 1))
            response.status_code = _STATUS[code]
            return
