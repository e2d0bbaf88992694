"""One schema extension for everything LedgerX adds around an operation.

Parse and validation caches, the token/depth/alias/cost limits, optional introspection refusal and
error shaping used to be five strawberry extensions. Strawberry builds every extension's hook
wrappers (context managers, `functools.wraps`) on every request, so five extensions cost more
CPU per `debitWallet` than the validation they cache; one extension with few hooks does the
same work with a fifth of that overhead.

The edge rules every operation meets here, over HTTP and websockets alike:
- a document that does not parse (syntax, over the token limit) is reported by strawberry's own
  parse step, inside the operation, so its error is shaped (`BAD_USER_INPUT`) like any other;
- a document whose expanded cost (schema/cost.py) is over the limit is refused before validation,
  which for such a document would itself take seconds;
- string literals and variables that PostgreSQL cannot store (NUL, lone surrogates) are refused
  once, here, rather than failing as `INTERNAL` wherever they reach a query;
- with introspection off, errors do not suggest names ("Did you mean …?") either.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import GraphQLError, GraphQLSchema, validate
from graphql.language import ArgumentNode, ObjectFieldNode, StringValueNode, VariableDefinitionNode
from graphql.language.parser import parse
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule
from strawberry.types.execution import ExecutionResult as StrawberryExecutionResult

from ledgerx import metrics
from ledgerx.http.jsonbody import find_bad_text, text_problem
from ledgerx.logs import note_operation
from ledgerx.schema.cost import document_cost
from ledgerx.schema.errors import shape, status_headers
from ledgerx.schema.shared_results import SharedResultsExecutor

# Bounded: distinct query texts come from clients, and a public endpoint must not let them grow
# memory without limit. Documents are few in practice (clients send the same texts).
CACHE_SIZE = 512
_cached_parse: Callable[..., Any] = lru_cache(maxsize=CACHE_SIZE)(parse)


def _validate(
    schema: GraphQLSchema, document: Any, rules: tuple[type[ASTValidationRule], ...], hide_suggestions: bool
) -> list[GraphQLError]:
    # strawberry's validate_document with graphql-core's `hide_suggestions` passed through.
    return validate(
        schema,
        document,
        (*rules, MaybeNullValidationRule, OneOfInputValidationRule),
        hide_suggestions=hide_suggestions,
    )


_cached_validate: Callable[..., list[GraphQLError]] = lru_cache(maxsize=CACHE_SIZE)(_validate)


@lru_cache(maxsize=CACHE_SIZE)
def _cached_cost(schema: GraphQLSchema, query: str, parse_options: tuple[tuple[str, Any], ...]) -> int:
    # Keyed on the text like the parse cache (whose document this is: a hit there).
    return document_cost(schema, _cached_parse(query, **dict(parse_options)))


def pipeline(
    *,
    max_tokens: int,
    max_cost: int,
    rules: Sequence[type[ASTValidationRule]],
    introspection: bool,
) -> Callable[[], SchemaExtension]:
    """The extension factory `build_schema` installs (strawberry wants a fresh one per request)."""
    extra = (*rules, StorableTextRule) + (() if introspection else (NoSchemaIntrospectionCustomRule,))
    # Suggestions name fields, arguments and enum values: a schema that hides itself from
    # introspection must not spell itself out in error messages either.
    hide_suggestions = not introspection

    def factory() -> SchemaExtension:
        return Pipeline(max_tokens, max_cost, extra, hide_suggestions)

    return factory


def executor_class(*, introspection: bool) -> type[SharedResultsExecutor]:
    """The executor `build_schema` installs: without introspection, variable-coercion errors
    ("Field 'nme' is not defined by type 'SignUpInput'. Did you mean 'name'?") hide suggestions."""
    return SharedResultsExecutor if introspection else NoSuggestionsExecutor


class NoSuggestionsExecutor(SharedResultsExecutor):
    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        kwargs["hide_suggestions"] = True  # graphql-core always passes it by keyword
        return super().build(*args, **kwargs)


class Pipeline(SchemaExtension):
    def __init__(
        self, max_tokens: int, max_cost: int, rules: tuple[type[ASTValidationRule], ...], hide_suggestions: bool
    ) -> None:
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.rules = rules
        self.hide_suggestions = hide_suggestions
        self.streamed = False

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        ec = self.execution_context
        ec.parse_options["max_tokens"] = self.max_tokens
        ec.validation_rules = ec.validation_rules + self.rules
        yield
        # Latency per operation name (bounded labels; subscriptions are not timed: metrics.py).
        metrics.observe_operation(ec.graphql_document, ec.operation_name, time.perf_counter() - started)
        note_operation(ec.operation_name)  # for the request's log line (middleware.py)
        if self.streamed:
            return  # websocket results were shaped one by one (on_stream_result)
        result = ec.result
        if isinstance(result, GraphQLExecutionResult | StrawberryExecutionResult) and result.errors:
            result.errors = [shape(e, ec.context) for e in result.errors]
            status_headers(result.errors, ec.context)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        # Streamed results (websockets) reach the client before on_operation ends: shape each one.
        self.streamed = True
        if getattr(result, "errors", None):
            result.errors = [shape(e, self.execution_context.context) for e in result.errors]
        yield

    def on_parse(self) -> Iterator[None]:
        ec = self.execution_context
        # On a syntax error the document is left unset: strawberry parses the text again inside
        # its error handling, so the error is the operation's result (and shaped) instead of
        # escaping the operation (no code over HTTP, only `complete` over websockets).
        with contextlib.suppress(GraphQLError):
            ec.graphql_document = _cached_parse(ec.query, **ec.parse_options)
        yield

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        ec.pre_execution_errors = self._cost_errors() or self._validation_errors() or self._variable_errors()
        yield

    def _cost_errors(self) -> list[GraphQLError]:
        ec = self.execution_context
        schema = ec.schema._schema
        if ec.query is not None:
            cost = _cached_cost(schema, ec.query, tuple(sorted(ec.parse_options.items())))
        else:
            cost = document_cost(schema, ec.graphql_document)  # type: ignore[arg-type]
        if cost <= self.max_cost:
            return []
        shown = f"{cost:,}" if cost < 10**15 else "far more"
        message = (
            f"The query is too expensive: it could resolve {shown} fields once fragments are expanded"
            f" and pages (first/last) counted, and at most {self.max_cost:,} are allowed."
            " Ask for fewer fields, smaller pages or fewer fragment spreads."
        )
        return [GraphQLError(message, extensions={"code": "BAD_USER_INPUT", "cost": cost, "maxCost": self.max_cost})]

    def _validation_errors(self) -> list[GraphQLError]:
        ec = self.execution_context
        return _cached_validate(ec.schema._schema, ec.graphql_document, ec.validation_rules, self.hide_suggestions)

    def _variable_errors(self) -> list[GraphQLError]:
        problem = find_bad_text(self.execution_context.variables or {})
        if problem is None:
            return []
        path, reason = problem
        # `field` names the input field, as the domain's own BAD_USER_INPUT errors do; the message
        # gives the whole path inside the variable.
        field = next((str(p) for p in reversed(path) if isinstance(p, str)), None)
        where = ".".join(str(p) for p in path)
        return [GraphQLError(f"Variable ${where} {reason}", extensions={"code": "BAD_USER_INPUT", "field": field})]


class StorableTextRule(ASTValidationRule):
    """String literals (arguments, input fields, variable defaults) must be text PostgreSQL can
    store: the same rule `find_bad_text` applies to variables and JSON bodies."""

    def enter_string_value(self, node: StringValueNode, _key: Any, parent: Any, _path: Any, ancestors: Any) -> None:
        reason = text_problem(node.value)
        if reason is None:
            return
        field = _literal_name([*ancestors, parent])  # graphql-core's ancestors exclude the parent
        self.report_error(
            GraphQLError(
                f"{field} {reason}" if field else f"A string {reason}",
                node,
                extensions={"code": "BAD_USER_INPUT", **({"field": field} if field else {})},
            )
        )


def _literal_name(ancestors: Sequence[Any]) -> str | None:
    """The argument or input field a literal is given for (the nearest one)."""
    for node in reversed(ancestors):
        if isinstance(node, ArgumentNode | ObjectFieldNode):
            return str(node.name.value)
        if isinstance(node, VariableDefinitionNode):
            return "$" + node.variable.name.value
    return None
