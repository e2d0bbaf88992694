"""Relay-style connections: `edges { node cursor }` and `pageInfo { hasNextPage endCursor }`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import strawberry

from ledgerx.domain.pagination import encode_cursor

T = TypeVar("T")
R = TypeVar("R")


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[T]):
    node: T
    cursor: str


@strawberry.type
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo

    @strawberry.field
    def nodes(self) -> list[T]:
        return [e.node for e in self.edges]


def connection(
    rows: Sequence[R], limit: int, key: Callable[[R], uuid.UUID], to_node: Callable[[R], T]
) -> Connection[T]:
    """Build a page from up to `limit + 1` rows (the extra row only tells that more exist)."""
    page = rows[:limit]
    edges = [Edge(node=to_node(r), cursor=encode_cursor(key(r))) for r in page]
    return Connection(
        edges=edges,
        page_info=PageInfo(has_next_page=len(rows) > limit, end_cursor=edges[-1].cursor if edges else None),
    )
