from __future__ import annotations

import strawberry

from ledgerx.context import Context

Info = strawberry.Info[Context, None]
