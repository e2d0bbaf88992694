"""Per-request DataLoaders, created on first use in the context's `dataloaders` (see `loader`).

A field resolver that needs the database asks a loader instead of opening a transaction per parent
row: the loader collects the keys of every row of the list and calls one batch function of the
domain once. Loaders that take field arguments (a page size, a cursor) put them in their name, so
each distinct set of arguments is one batch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader

from ledgerx.context import Context

K = TypeVar("K")
V = TypeVar("V")


def loader(
    ctx: Context, name: str, fn: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]], default: Any = None
) -> DataLoader[K, V]:
    """The request's loader called `name`, batching keys into one call of `fn` (a dict by key)."""
    existing = ctx.dataloaders.get(name)
    if existing is None:

        async def batch(keys: list[K]) -> list[V]:
            found = await fn(keys)
            return [found.get(k, default) for k in keys]

        existing = DataLoader(load_fn=batch)
        ctx.dataloaders[name] = existing
    dl: DataLoader[K, V] = existing
    return dl
