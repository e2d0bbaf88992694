"""Subscription events that share one execution: a snapshot is rendered once, not once per subscriber.

graphql-core executes a subscription's selection set for every event of every subscriber. A live
feed hands the *same* snapshot to all subscribers of a project, so with the same document and
variables the result is the same for all of them except a few fields that belong to the
subscriber's own stream (`sequence`, `events`, `firstEventAt`, ...). Executing the selection set a
thousand times per snapshot is most of what a live server spends its CPU on.

An event opts in by carrying a `SharedResults` (its `shared_results` attribute), made once per
snapshot and named with the attributes that differ per subscriber. `SharedResultsExecutor` then
executes the event normally for the first subscriber of each (document, variables) pair, keeps the
result as a template, and answers every other subscriber with a copy of the template whose
per-subscriber fields are replaced by that subscriber's own values, completed as graphql-core
completes a leaf (the scalar's output coercion).

The contract of an opting-in type: every field other than the per-subscriber ones depends only on
the snapshot, never on who is asking (no viewer-dependent resolvers, no permission classes).

Anything unusual falls back to normal execution: a result with errors or one that has to be
awaited is not kept, a per-subscriber field that is not a top-level leaf disables sharing for
that document, and a per-subscriber value that cannot be completed executes the event normally
(so errors are reported exactly as graphql-core reports them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from graphql import (
    ExecutionResult,
    GraphQLLeafType,
    GraphQLNonNull,
    GraphQLObjectType,
    OperationDefinitionNode,
    OperationType,
    is_leaf_type,
)
from graphql.execution.collect_fields import collect_fields
from prometheus_client import Counter
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter

from ledgerx.metrics import REGISTRY

# Distinct (document, variables) pairs remembered per snapshot. Clients of one dashboard send a
# handful; the bound keeps a client that varies its documents from growing the cache.
MAX_TEMPLATES = 16

# Also how an operator (and bench/live.py) sees that the schema runs this executor at all.
SHARED_EVENTS = Counter(
    "ledgerx_graphql_shared_events_total",
    "Subscription events of types that share their rendering: `executed` (the first of a snapshot and"
    " document, or not shareable) or `shared` (a copy of that execution with the subscriber's own fields)",
    ["how"],
    registry=REGISTRY,
)
_EXECUTED = SHARED_EVENTS.labels("executed")
_SHARED = SHARED_EVENTS.labels("shared")


class SharedResults:
    """The renders of one snapshot. Made once per snapshot and carried by every event built from it."""

    __slots__ = ("_templates", "per_subscriber", "renders", "shared")

    def __init__(self, per_subscriber: frozenset[str]) -> None:
        self.per_subscriber = per_subscriber  # attribute names of the event that differ per subscriber
        self._templates: list[_Template] = []
        self.renders = 0  # events answered by a full execution (at most one per document)
        self.shared = 0  # events answered from a template

    def template(self, operation: OperationDefinitionNode, variables: Mapping[str, Any]) -> _Template | None:
        document = _document_key(operation)
        for t in self._templates:
            if t.document == document and t.variables == variables:
                return t
        return None

    def keep(self, template: _Template) -> None:
        if len(self._templates) < MAX_TEMPLATES:
            self._templates.append(template)


# (response key, attribute, output coercion of its leaf type, non-null) of one per-subscriber field
_Slot = tuple[str, str, Callable[[Any], Any], bool]


class _Template:
    __slots__ = ("document", "inner", "root_key", "slots", "variables")

    def __init__(
        self,
        operation: OperationDefinitionNode,
        variables: Mapping[str, Any],
        root_key: str,
        inner: dict[str, Any] | None,
        slots: tuple[_Slot, ...],
    ) -> None:
        self.document = _document_key(operation)
        self.variables = variables
        self.root_key = root_key
        self.inner = inner  # None: this document cannot be shared (it is executed every time)
        self.slots = slots

    def render(self, event: object) -> dict[str, Any] | None:
        """The result for `event`, or None when it has to be executed normally."""
        if self.inner is None:
            return None
        inner = self.inner.copy()  # keeps the response key order of the selection
        try:
            for key, attr, coerce, non_null in self.slots:
                value = getattr(event, attr)
                if value is None:
                    if non_null:
                        return None
                    inner[key] = None
                else:
                    inner[key] = coerce(value)
        except Exception:  # graphql-core reports the error with its path; let it
            return None
        return {self.root_key: inner}


def _coercion(leaf: GraphQLLeafType) -> Callable[[Any], Any]:
    """How graphql-core completes a value of `leaf` (`coerce_output_value` since graphql-core 3.3)."""
    coerce: Callable[[Any], Any] = getattr(leaf, "coerce_output_value", None) or leaf.serialize
    return coerce


class SharedResultsExecutor(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor, plus shared rendering of opted-in subscription events (module doc)."""

    def build_per_event_executor(self, payload: Any) -> Any:
        data = self._shared_data(payload)
        if data is not None:
            # The event needs no execution, so no copy of this executor either (a copy per message
            # costs as much as rendering it).
            return _RenderedEvent(self, data)
        executor = super().build_per_event_executor(payload)
        # Every event is executed with new DataLoaders: a loader keeps what it loaded, and a live
        # stream must show each event's values, not those loaded at an earlier event.
        for_event = getattr(self.context_value, "for_event", None)
        if callable(for_event):
            executor.context_value = for_event()
        # graphql-core memoizes collected sub-fields by the identity of field lists that every
        # event builds anew, in a dict that the per-event copies share with the subscription's
        # executor: it gains entries on every event for the life of the subscription (a leak of
        # a few KiB per message). Each event gets its own memo instead.
        if hasattr(executor, "_relevant_sub_fields"):
            executor._relevant_sub_fields = {}
        return executor

    def _shared_data(self, payload: Any) -> dict[str, Any] | None:
        shared = getattr(payload, "shared_results", None)
        if not isinstance(shared, SharedResults) or self.operation.operation is not OperationType.SUBSCRIPTION:
            return None
        template = shared.template(self.operation, _coerced(self.variable_values))
        if template is None:
            return None
        data = template.render(payload)
        if data is not None:
            shared.shared += 1
            _SHARED.inc()
        return data

    def execute_operation(self, serially: bool | None = None) -> Any:
        """Executes the event; the first of each document for an opted-in snapshot becomes its template."""
        if self.operation.operation is OperationType.MUTATION:
            self._forget_loads_between_root_fields()
        result = super().execute_operation(serially)
        shared = getattr(self.root_value, "shared_results", None)
        if not isinstance(shared, SharedResults) or self.operation.operation is not OperationType.SUBSCRIPTION:
            return result
        shared.renders += 1
        _EXECUTED.inc()
        variables = _coerced(self.variable_values)
        if (
            isinstance(result, ExecutionResult)
            and not result.errors
            and result.data is not None
            and shared.template(self.operation, variables) is None
        ):
            shared.keep(self._template(shared, variables, result.data))
        return result

    def _forget_loads_between_root_fields(self) -> None:
        """A mutation's root fields run one after another, each with no DataLoader yet: a loader
        keeps what it loaded, and a field must see what the fields before it wrote. (Only for
        mutations: the executor's per-field path stays as it is for queries and live events.)"""
        dataloaders = getattr(self.context_value, "dataloaders", None)
        if not isinstance(dataloaders, dict):
            return
        execute_field = self.execute_field
        mutation_type = self.schema.mutation_type

        def execute_root_field_afresh(parent_type: GraphQLObjectType, *args: Any) -> Any:
            if parent_type is mutation_type:
                dataloaders.clear()
            return execute_field(parent_type, *args)

        self.execute_field = execute_root_field_afresh  # type: ignore[method-assign,assignment]

    def _template(self, shared: SharedResults, variables: Mapping[str, Any], data: dict[str, Any]) -> _Template:
        """The template of this document for `shared`'s snapshot, from the first subscriber's result."""
        unshareable = _Template(self.operation, variables, "", None, ())
        root_type = self.schema.subscription_type
        if root_type is None:
            return unshareable
        grouped, _defers, _forbidden = collect_fields(
            self.schema, self.fragments, self.variable_values, root_type, self.operation, self.hide_suggestions
        )
        if len(grouped) != 1:
            return unshareable
        ((root_key, details),) = grouped.items()
        root_field = root_type.fields.get(details[0].node.name.value)
        inner = data.get(root_key)
        if root_field is None or not isinstance(inner, dict):
            return unshareable
        object_type = root_field.type.of_type if isinstance(root_field.type, GraphQLNonNull) else root_field.type
        if not isinstance(object_type, GraphQLObjectType):
            return unshareable
        sub, _defers, _forbidden = self.collect_subfields(object_type, details)
        slots: list[_Slot] = []
        for key, field_details in sub.items():
            name = field_details[0].node.name.value
            field = object_type.fields.get(name)
            if field is None:  # __typename: the same for every subscriber
                continue
            definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
            attr = getattr(definition, "python_name", None)
            if not isinstance(attr, str) or attr not in shared.per_subscriber:
                continue
            non_null = isinstance(field.type, GraphQLNonNull)
            leaf = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
            if not is_leaf_type(leaf):
                return unshareable
            slots.append((key, attr, _coercion(leaf), non_null))
        return _Template(self.operation, variables, root_key, dict(inner), tuple(slots))


class _RenderedEvent:
    """The per-event "executor" of an event answered from a template: graphql-core's subscription
    mapping only asks it to `execute_operation` (strawberry passes no execution hooks)."""

    __slots__ = ("_data", "_executor")

    def __init__(self, executor: SharedResultsExecutor, data: dict[str, Any]) -> None:
        self._executor = executor
        self._data = data

    def execute_operation(self, serially: bool | None = None) -> ExecutionResult:
        result: ExecutionResult = self._executor.finish(ExecutionResult(self._data, None))  # raises if aborted
        return result


def _document_key(operation: OperationDefinitionNode) -> object:
    """What identifies a document across subscribers: its source text and the operation's name
    (every websocket parses its own copy unless a parser cache hands out the same one)."""
    if operation.loc is None:  # parsed without locations: only the same node is the same document
        return operation
    return (operation.loc.source.body, operation.name.value if operation.name else None)


def _coerced(variable_values: Any) -> Mapping[str, Any]:
    """The coerced variables (graphql-core 3.3 wraps them in a `VariableValues`)."""
    coerced: Mapping[str, Any] = getattr(variable_values, "coerced", variable_values)
    return coerced
