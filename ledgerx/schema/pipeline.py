"""One schema extension for everything LedgerX adds around an operation.

Parse and validation caches, the token/depth/alias limits, optional introspection refusal and
error shaping used to be five strawberry extensions. Strawberry builds every extension's hook
wrappers (context managers, `functools.wraps`) on every request, so five extensions cost more
CPU per `debitWallet` than the validation they cache; one extension with three hooks does the
same work with a fifth of that overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql.language.parser import parse
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types.execution import ExecutionResult as StrawberryExecutionResult

from ledgerx import metrics
from ledgerx.logs import note_operation
from ledgerx.schema.errors import rate_limit_headers, shape

# Bounded: distinct query texts come from clients, and a public endpoint must not let them grow
# memory without limit. Documents are few in practice (clients send the same texts).
CACHE_SIZE = 512
_cached_parse: Callable[..., Any] = lru_cache(maxsize=CACHE_SIZE)(parse)
_cached_validate: Callable[..., Any] = lru_cache(maxsize=CACHE_SIZE)(validate_document)


def pipeline(
    *, max_tokens: int, rules: Sequence[type[ASTValidationRule]], introspection: bool
) -> Callable[[], SchemaExtension]:
    """The extension factory `build_schema` installs (strawberry wants a fresh one per request)."""
    extra = tuple(rules) + (() if introspection else (NoSchemaIntrospectionCustomRule,))

    def factory() -> SchemaExtension:
        return Pipeline(max_tokens, extra)

    return factory


class Pipeline(SchemaExtension):
    def __init__(self, max_tokens: int, rules: tuple[type[ASTValidationRule], ...]) -> None:
        self.max_tokens = max_tokens
        self.rules = rules

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        ec = self.execution_context
        ec.parse_options["max_tokens"] = self.max_tokens
        ec.validation_rules = ec.validation_rules + self.rules
        yield
        # Latency per operation name (bounded labels; subscriptions are not timed: metrics.py).
        metrics.observe_operation(ec.graphql_document, ec.operation_name, time.perf_counter() - started)
        note_operation(ec.operation_name)  # for the request's log line (middleware.py)
        result = ec.result
        if isinstance(result, GraphQLExecutionResult | StrawberryExecutionResult) and result.errors:
            result.errors = [shape(e, ec.context) for e in result.errors]
            rate_limit_headers(result.errors, ec.context)

    def on_parse(self) -> Iterator[None]:
        ec = self.execution_context
        ec.graphql_document = _cached_parse(ec.query, **ec.parse_options)
        yield

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        ec.pre_execution_errors = _cached_validate(ec.schema._schema, ec.graphql_document, ec.validation_rules)
        yield
