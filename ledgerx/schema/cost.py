"""The expanded cost of a GraphQL document: how many fields executing it could resolve.

Depth, token and alias limits bound what a document *looks* like, not what it expands to: a
fragment that spreads the previous one twice doubles the work at every step, so 20 such fragments
(under 1 KB of text) stand for 2^20 fields, and validating or executing them takes seconds. The
cost counts every field once per place it ends up after fragment expansion, and multiplies what
is under a paginated field by the page it asks for (`first`/`last`, else the argument's schema
default, a variable counting as the largest page), so a limit on it bounds the work of any document.

It is computed from the syntax tree with the schema's field definitions, before validation, in
time linear in the document: each fragment's cost is computed once (fragments in dependency
order, a cycle counting as nothing, which validation reports anyway) and reused at every spread.
"""

from __future__ import annotations

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)
from graphql.type.introspection import SchemaMetaFieldDef, TypeMetaFieldDef

from ledgerx.domain.pagination import MAX_PAGE

# Costs saturate here: a document past any sane limit need not be counted exactly (and Python's
# unbounded integers would otherwise grow with every doubling fragment).
SATURATED = 2**62

_PAGE_ARGS = ("first", "last")


def document_cost(schema: GraphQLSchema, document: DocumentNode) -> int:
    """The largest expanded cost of the document's operations (0 without any)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    counter = _Counter(schema, fragments)
    counter.cost_fragments()
    best = 0
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            root = _root_type(schema, definition.operation)
            best = max(best, counter.selection_cost(definition.selection_set, root))
    return best


def _root_type(schema: GraphQLSchema, operation: OperationType) -> GraphQLObjectType | None:
    if operation is OperationType.QUERY:
        return schema.query_type
    if operation is OperationType.MUTATION:
        return schema.mutation_type
    return schema.subscription_type


def _spreads(selection_set: SelectionSetNode) -> set[str]:
    """The fragment names spread anywhere inside a selection set (without following them)."""
    found: set[str] = set()
    stack = [selection_set]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                found.add(selection.name.value)
            elif isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set is not None:
                stack.append(selection.selection_set)
    return found


class _Counter:
    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode]) -> None:
        self.schema = schema
        self.fragments = fragments
        self.fragment_cost: dict[str, int] = {}

    def cost_fragments(self) -> None:
        """Each fragment's cost, dependencies first (an iterative post-order walk: chains of
        hundreds of fragments fit in a document and must not exhaust Python's stack)."""
        deps = {name: _spreads(d.selection_set) & self.fragments.keys() for name, d in self.fragments.items()}
        state: dict[str, int] = {}  # 1: in progress, 2: done
        for start in self.fragments:
            if state.get(start):
                continue
            state[start] = 1
            stack = [(start, iter(sorted(deps[start])))]
            while stack:
                name, pending = stack[-1]
                following = next((d for d in pending if not state.get(d)), None)
                if following is not None:
                    state[following] = 1
                    stack.append((following, iter(sorted(deps[following]))))
                    continue
                stack.pop()
                definition = self.fragments[name]
                parent = self.schema.get_type(definition.type_condition.name.value)
                # A spread of a fragment still in progress (a cycle) counts 0 (absent from the map).
                self.fragment_cost[name] = self.selection_cost(definition.selection_set, parent)
                state[name] = 2

    def selection_cost(self, selection_set: SelectionSetNode, parent: GraphQLNamedType | None) -> int:
        # Recursion follows the document's nesting only, which graphql-core's parser bounds.
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                field = self._field(parent, selection.name.value)
                total += 1
                if selection.selection_set is not None:
                    child = get_named_type(field.type) if field is not None else None
                    total += self._page(selection, field) * self.selection_cost(selection.selection_set, child)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.schema.get_type(condition.name.value) if condition is not None else parent
                total += self.selection_cost(selection.selection_set, inner)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment_cost.get(selection.name.value, 0)
            if total >= SATURATED:
                return SATURATED
        return total

    def _field(self, parent: GraphQLNamedType | None, name: str) -> GraphQLField | None:
        if parent is self.schema.query_type and name in ("__schema", "__type"):
            return SchemaMetaFieldDef if name == "__schema" else TypeMetaFieldDef
        if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            field: GraphQLField | None = parent.fields.get(name)
            return field
        return None  # unknown: validation will say so; its selections still count once

    @staticmethod
    def _page(node: FieldNode, field: GraphQLField | None) -> int:
        """How many items a paginated field may return: its `first`/`last`, else the schema default."""
        given = {a.name.value: a.value for a in node.arguments or ()}
        size = 0
        for name in _PAGE_ARGS:
            value = given.get(name)
            if isinstance(value, IntValueNode):
                size = max(size, int(value.value))
            elif isinstance(value, VariableNode):
                size = MAX_PAGE  # known only at execution; the largest page the API serves
            elif value is None and field is not None and name in field.args:
                default = field.args[name].default_value
                if isinstance(default, int):
                    size = max(size, default)
        # Larger pages are refused by the resolvers (BAD_USER_INPUT); an absent or odd value is one.
        return min(max(size, 1), MAX_PAGE)
