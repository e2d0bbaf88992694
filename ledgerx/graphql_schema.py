"""The GraphQL schema: the resolver classes of every area, merged by name.

The order of each tuple is the order of the root fields in schema.graphql. This module sits above
`ledgerx.resolvers` (which imports `ledgerx.schema` for its types), so neither of those packages
needs to know the list of areas.
"""

from __future__ import annotations

import strawberry
from graphql.error import GraphQLError
from graphql.validation import ASTValidationRule
from strawberry.extensions.max_aliases import create_validator as aliases_validator
from strawberry.extensions.query_depth_limiter import create_validator as depth_validator
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from ledgerx.resolvers import (
    admin,
    analytics,
    api_keys,
    auth,
    billing,
    coupons,
    entitlements,
    invites,
    invoicing,
    ledger,
    notifications,
    payments,
    system,
    tenancy,
    top_up,
    usage,
    webhooks,
)
from ledgerx.schema.pipeline import executor_class, pipeline
from ledgerx.schema.scalars import SCALAR_MAP
from ledgerx.settings import Settings

Query = merge_types(
    "Query",
    (
        auth.Query,
        system.Query,
        tenancy.Query,
        invites.Query,
        api_keys.Query,
        ledger.Query,
        usage.Query,
        entitlements.Query,
        billing.Query,
        payments.Query,
        invoicing.Query,
        coupons.Query,
        analytics.Query,
        webhooks.Query,
    ),
)
Mutation = merge_types(
    "Mutation",
    (
        auth.Mutation,
        tenancy.Mutation,
        invites.Mutation,
        api_keys.Mutation,
        admin.Mutation,
        ledger.Mutation,
        usage.Mutation,
        entitlements.Mutation,
        billing.Mutation,
        payments.Mutation,
        invoicing.Mutation,
        coupons.Mutation,
        top_up.Mutation,
        webhooks.Mutation,
        notifications.Mutation,
    ),
)
Subscription = merge_types("Subscription", (system.Subscription, ledger.Subscription, analytics.Subscription))


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
