"""A Stripe event as the handlers see it, what a handler reports back, and the two ways it can
refuse to apply (not yet, never)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ledgerx.domain.actor import Actor
from ledgerx.domain.payments import objects
from ledgerx.domain.payments.objects import Obj
from ledgerx.domain.payments.service import PaymentsService

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class NotReady(Exception):
    """The event refers to something LedgerX has not recorded yet: retry later."""


class Permanent(Exception):
    """The event can never apply as it is (it names a credit pack, plan or project LedgerX does not
    have): fail it once with this readable reason, no retries (the inbox keeps it as DEAD)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    created: dt.datetime
    obj: Obj

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> Event:
        return cls(
            id=str(payload.get("id") or ""),
            type=str(payload.get("type") or ""),
            created=objects.ts(payload.get("created")) or EPOCH,
            obj=objects.data_object(payload),
        )

    @property
    def actor(self) -> Actor:
        return Actor.system(request_id=f"stripe:{self.id}")


@dataclasses.dataclass(slots=True)
class Outcome:
    result: str
    project_id: uuid.UUID | None = None
    ignored: bool = False
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)


Handler = Callable[[PaymentsService, Event], Awaitable[Outcome]]
