"""The one way a caller is authorized on a project: find their access, then check a `Rule`.

GraphQL (`resolvers/guards.py`), POST /v1/usage and the domain's find-and-check helpers (a wallet:
`ledger/wallets.find_wallet`) all go through an `Authorizer`, so every path reads the same access
cache (`access_cache.py`: a member's access for a short TTL, dropped at once when a change is
announced) and applies the same checks (`access.check`). The rules are values kept by the domain
they guard (`ledger/policy.py`, `usage/policy.py`, `analytics/policy.py`, billing's); the scopes
they name are those of `scopes.py`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

from ledgerx.db.engine import Database
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import NotFound
from ledgerx.domain.tenancy.access import Access, Need, check, check_scope, load_access
from ledgerx.domain.tenancy.access_cache import AccessCache
from ledgerx.domain.tenancy.scopes import Scope


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """What an operation takes: the least member role (`need`), whether it writes (a suspended
    project refuses writes), the scope an API key needs (with none, keys are refused when members
    need ADMIN or OWNER), and optionally the message a member whose role is too low gets."""

    need: Need
    write: bool
    scope: Scope | None = None
    refusal: str | None = None


def permit(access: Access, rule: Rule) -> Access:
    """`access` if it satisfies `rule`, else FORBIDDEN / PROJECT_SUSPENDED."""
    return check(access, rule.need, write=rule.write, scope=rule.scope, refusal=rule.refusal)


def check_key_scope(principal: Principal, rule: Rule) -> None:
    """Refuse an API key lacking the rule's scope before any lookup, with the FORBIDDEN `permit`
    would give (a route can then skip reading a body it would refuse anyway)."""
    if principal.kind == "api_key" and rule.scope is not None:
        check_scope(principal.scopes, rule.scope)


class Authorizer:
    """One caller's access to projects, for one request (or one websocket operation).

    Each project is looked up at most once per request; a signed-in member's and an API key's
    access also comes from, and goes to, the instance's shared `AccessCache`. Platform admins
    acting outside their memberships are always read from the database (see access_cache.py).
    `on_access` sees every access found (GraphQL notes the platform-admin flag it carries).
    """

    def __init__(
        self,
        db: Database,
        cache: AccessCache,
        principal: Principal,
        *,
        on_access: Callable[[Access], object] | None = None,
    ) -> None:
        self.db = db
        self.cache = cache
        self.principal = principal
        self._on_access = on_access
        self._found: dict[uuid.UUID, Access] = {}

    async def access(self, project_id: uuid.UUID) -> Access:
        """How the caller reaches the project (NOT_FOUND when they do not); not yet checked."""
        access = self._found.get(project_id)
        if access is not None:
            return access
        # A member's access is kept by user, an API key's by key (access_cache.py).
        holder = self.principal.user_id if self.principal.kind == "user" else self.principal.api_key_id
        access = self.cache.get(holder, project_id) if holder is not None else None
        if access is None:
            epoch = self.cache.epoch
            access = await load_access(self.db, self.principal, project_id)
            if holder is not None:
                self.cache.put(holder, access, loaded_at_epoch=epoch)
        if self._on_access is not None:
            self._on_access(access)
        self._found[project_id] = access
        return access

    async def require(self, project_id: uuid.UUID, rule: Rule) -> Access:
        """The caller's access to the project if `rule` allows the operation; NOT_FOUND /
        FORBIDDEN / PROJECT_SUSPENDED otherwise."""
        return permit(await self.access(project_id), rule)

    async def require_for(self, project_id: uuid.UUID | None, rule: Rule, *, what: str, field: str) -> Access:
        """`require` for an object (`what`: "wallet", "billing rule", …) found by id in the project
        `project_id` (None: no such object). A missing object and one in a project the caller cannot
        reach get the same NOT_FOUND "<what> not found", so ids tell nothing across tenants."""
        if project_id is None:
            raise NotFound(f"{what} not found", field=field)
        try:
            return await self.require(project_id, rule)
        except NotFound:
            raise NotFound(f"{what} not found", field=field) from None
