"""Per-request DataLoaders, created lazily on the context (see `loader`)."""

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
    existing = ctx.loaders.get(name)
    if existing is None:

        async def batch(keys: list[K]) -> list[V]:
            found = await fn(keys)
            return [found.get(k, default) for k in keys]

        existing = DataLoader(load_fn=batch)
        ctx.loaders[name] = existing
    dl: DataLoader[K, V] = existing
    return dl
