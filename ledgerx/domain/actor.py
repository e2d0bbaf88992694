"""Who is acting, and the request facts the audit log records."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ledgerx.domain.auth.principal import Principal


@dataclasses.dataclass(frozen=True, slots=True)
class RequestMeta:
    request_id: str | None = None
    ip: str | None = None  # an IP address or None (see __post_init__)
    user_agent: str | None = None

    def __post_init__(self) -> None:
        # The audit log and sessions store the address in an inet column. A peer that is not an IP
        # (a Unix socket's path, an ASGI client's name such as starlette's "testclient") used to
        # fail the whole request's write as INTERNAL; it is recorded as unknown instead.
        if self.ip is not None and not _is_ip(self.ip):
            object.__setattr__(self, "ip", None)


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


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
