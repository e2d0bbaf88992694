"""The clients: `LedgerX` (blocking) and `AsyncLedgerX` (asyncio), with the same methods."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ledgerx_client._base import RetryEvent, RetryPolicy
from ledgerx_client._generated.operations import AsyncOperations, SyncOperations
from ledgerx_client.usage import AsyncUsage, Usage


class LedgerX(SyncOperations):
    """A blocking LedgerX client.

        client = LedgerX("https://ledgerx.example.com", api_key="lx_…")
        tx = client.debit_wallet(wallet_id="wal_…", amount=100)

    Authenticate with a project's API key or a user's access token (both are sent as
    `Authorization: Bearer …`). Every method is one operation of sdk/operations; `usage.ingest`
    posts usage events to `/v1/usage`. Thread-safe; close it (or use `with`) when done.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            access_token=access_token,
            timeout=timeout,
            retry=retry,
            on_retry=on_retry,
            transport=transport,
        )
        self.usage = Usage(self)

    def __enter__(self) -> LedgerX:
        return self


class AsyncLedgerX(AsyncOperations):
    """An asyncio LedgerX client, with the methods of `LedgerX` as coroutines (subscriptions as
    async iterators)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            access_token=access_token,
            timeout=timeout,
            retry=retry,
            on_retry=on_retry,
            transport=transport,
        )
        self.usage = AsyncUsage(self)

    async def __aenter__(self) -> AsyncLedgerX:
        return self
