"""Who is acting, and the request facts the audit log records."""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledgerx.domain.auth.principal import Principal


@dataclasses.dataclass(frozen=True, slots=True)
class RequestMeta:
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Actor:
    """The caller of a domain function: a user, an API key, or the system itself."""

    type: str  # user | api_key | system | anonymous
    id: uuid.UUID | None = None
    meta: RequestMeta = dataclasses.field(default_factory=RequestMeta)

    @classmethod
    def system(cls, request_id: str | None = None) -> Actor:
        return cls("system", None, RequestMeta(request_id=request_id))

    @classmethod
    def anonymous(cls, meta: RequestMeta) -> Actor:
        return cls("anonymous", None, meta)

    @classmethod
    def of(cls, principal: Principal | None, meta: RequestMeta) -> Actor:
        """Who acts for a request: its API key or user (GraphQL's context and the HTTP routes)."""
        if principal is None:
            return cls.anonymous(meta)
        if principal.kind == "api_key":
            return cls("api_key", principal.api_key_id, meta)
        return cls("user", principal.user_id, meta)
