"""Assembles the Schema from the resolver modules."""

from __future__ import annotations

import importlib
from typing import Any

import strawberry
from graphql.error import GraphQLError
from graphql.validation import ASTValidationRule
from strawberry.extensions.max_aliases import create_validator as aliases_validator
from strawberry.extensions.query_depth_limiter import create_validator as depth_validator
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from ledgerx.schema.pipeline import executor_class, pipeline
from ledgerx.schema.scalars import SCALAR_MAP
from ledgerx.settings import Settings

# Each resolver module may define classes named `Query`, `Mutation` and `Subscription`; they are
# merged in this order (the order of fields in schema.graphql).
RESOLVER_MODULES = (
    "auth",
    "system",
    "tenancy",
    "invites",
    "api_keys",
    "admin",
    "ledger",
    "usage",
    "billing",
    "payments",
    "analytics",
)


def _collect(kind: str) -> tuple[type, ...]:
    found = []
    for name in RESOLVER_MODULES:
        module = importlib.import_module(f"ledgerx.resolvers.{name}")
        cls = getattr(module, kind, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


Query = merge_types("Query", _collect("Query"))
Mutation = merge_types("Mutation", _collect("Mutation"))
Subscription = merge_types("Subscription", _collect("Subscription"))


class LedgerXSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        # The pipeline (schema/pipeline.py) logs unexpected errors with their traceback; expected ones are not noise.
        return None


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    s = settings or Settings()
    # The limit rules are built once: the validation cache keys on the rule classes, and
    # QueryDepthLimiter/MaxAliasesLimiter would build new classes per request (a miss every time).
    rules: list[type[ASTValidationRule]] = [
        depth_validator(s.graphql_max_depth, None, None),
        aliases_validator(s.graphql_max_aliases),
    ]
    extensions = [
        pipeline(
            max_tokens=s.graphql_max_tokens,
            max_cost=s.graphql_max_cost,
            rules=rules,
            introspection=s.graphql_introspection,
        )
    ]
    return LedgerXSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        # Live snapshots are rendered once per document, not once per subscriber (shared_results.py).
        # (Without introspection, its variable-coercion errors suggest no names either.)
        execution_context_class=executor_class(introspection=s.graphql_introspection),
    )


def schema_sdl() -> str:
    return str(build_schema().as_str()) + "\n"


__all__: list[Any] = ["build_schema", "schema_sdl"]
