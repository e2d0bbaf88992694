"""An ASGI app built from the factory named by LEDGERX_BENCH_FACTORY ("module:function") on
first use (the lifespan's startup): for servers without app factories (granian)."""

from __future__ import annotations

import importlib
import os
from typing import Any


class _Lazy:
    def __init__(self) -> None:
        self.inner: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.inner is None:
            module, name = os.environ["LEDGERX_BENCH_FACTORY"].split(":")
            self.inner = getattr(importlib.import_module(module), name)()
        await self.inner(scope, receive, send)


app = _Lazy()
