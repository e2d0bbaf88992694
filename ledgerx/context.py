"""The per-request (or per-websocket-connection) GraphQL context."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from ledgerx import ids
from ledgerx.domain.actor import Actor, RequestMeta
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import AppError, Unauthenticated
from ledgerx.domain.tenancy.access import Access, is_platform_admin
from ledgerx.domain.tenancy.authorize import Authorizer
from ledgerx.services import Services

REFRESH_COOKIE = "lx_refresh"


@dataclasses.dataclass
class Context:
    services: Services
    request: Request | WebSocket
    response: Response | None
    meta: RequestMeta
    principal: Principal | None = None
    auth_error: AppError | None = None
    # Per-request caches of answers that hold for the whole request or operation (access, admin).
    loaders: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Per-request DataLoaders (see dataloaders/): a subscription gets new ones for every event
    # (`for_event`), so a live stream never serves a value cached at an earlier event.
    dataloaders: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Filled by strawberry from the websocket `connection_init` payload.
    connection_params: dict[str, Any] | None = None

    @property
    def request_id(self) -> str | None:
        return self.meta.request_id

    def for_event(self) -> Context:
        """This context with no DataLoaders yet: what one subscription event is executed with."""
        return dataclasses.replace(self, dataloaders={})

    def require_principal(self) -> Principal:
        if self.auth_error is not None:
            raise self.auth_error
        if self.principal is None:
            raise Unauthenticated("sign in or send an API key")
        return self.principal

    def require_user(self) -> Principal:
        p = self.require_principal()
        if p.kind != "user" or p.user_id is None:
            raise Unauthenticated("this operation needs a signed-in user, not an API key")
        return p

    async def is_platform_admin(self) -> bool:
        """Whether the caller is a platform admin (looked up once per request)."""
        cached = self.loaders.get("_platform_admin")
        if cached is None:
            p = self.principal
            cached = False
            if p is not None and p.kind == "user" and p.user_id is not None:
                cached = await is_platform_admin(self.services.db, p.user_id)
            self.loaders["_platform_admin"] = cached
        return bool(cached)

    def authorizer(self) -> Authorizer:
        """The caller's authorizer for this request (UNAUTHENTICATED without a principal): each
        project's access is found once per request, through the shared access cache."""
        principal = self.require_principal()
        found = self.loaders.get("_authorizer")
        if isinstance(found, Authorizer):
            return found

        def note_platform_admin(access: Access) -> None:
            # Spares `is_platform_admin` a lookup later in the request.
            if principal.kind == "user":
                self.loaders.setdefault("_platform_admin", access.is_platform_admin)

        made = Authorizer(self.services.db, self.services.access_cache, principal, on_access=note_platform_admin)
        self.loaders["_authorizer"] = made
        return made

    def actor(self) -> Actor:
        return Actor.of(self.principal, self.meta)


async def authenticate(services: Services, credential: str | None) -> Principal:
    """Turn an `Authorization: Bearer …` value (or X-Api-Key) into a principal."""
    if not credential:
        raise Unauthenticated("missing credentials")
    token = credential.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if token.startswith("lx_"):
        authenticate_key = getattr(services, "authenticate_api_key", None)
        if authenticate_key is None:
            raise Unauthenticated("API keys are not enabled on this server")
        principal: Principal = await authenticate_key(token)
        return principal
    claims = services.tokens.verify(token)
    try:
        user_id = ids.decode("user", str(claims["sub"]))
    except AppError:
        raise Unauthenticated("invalid access token") from None
    return Principal(kind="user", user_id=user_id, session_id=claims.get("sid"))


async def authenticate_now(services: Services, credential: str | None) -> Principal:
    """`authenticate`, and the token's session must not have been revoked since it was issued.

    For credentials that outlive a request (open websockets, live streams): HTTP requests get the
    revocation check from the gateway's rate-limit call instead (no extra round trip there).
    """
    principal = await authenticate(services, credential)
    revocations = services.tokens.revocations
    if principal.session_id and revocations is not None and await revocations.is_revoked(principal.session_id):
        raise session_revoked()
    return principal


def session_revoked() -> Unauthenticated:
    """What a caller whose session was revoked gets (the code of an expired token)."""
    return Unauthenticated("the session was signed out or revoked; sign in again", reason="revoked")


def connection_credential(params: dict[str, Any] | None) -> str | None:
    """The credential of a websocket's `connection_init` payload: {"authorization": "Bearer …"}
    (or {"apiKey": "lx_…"})."""
    p = params or {}
    credential = p.get("authorization") or p.get("Authorization")
    if not credential and p.get("apiKey"):
        credential = "Bearer " + str(p["apiKey"])
    return credential if isinstance(credential, str) and credential else None
