"""Per-project API keys: create (secret shown once), rotate with an overlap, revoke, list, authenticate.

A key looks like `lx_<public id>_<secret>`:
- the public id is 12 Crockford base32 characters (60 random bits), unique, stored in clear: it is
  the lookup key and what the API shows as `prefix` (`lx_<public id>`) so people can tell keys apart;
- the secret is 32 random bytes, urlsafe base64 (43 characters). Only its SHA-256 is stored. A slow
  password hash buys nothing for 256-bit random secrets and would cost every request; hashes are
  compared with `hmac.compare_digest`.

After `rotate` the previous secret keeps working until `previous_expires_at` (the configured overlap);
a second rotation inside the overlap retires the first old secret at once (one previous slot).
`revoke` kills the key and any overlapping secret immediately: authentication reads the row on every
request (no cache), so revocation holds across every app instance the moment it commits.

Every failure to authenticate (malformed, unknown, wrong secret, expired overlap, revoked) raises the
same UNAUTHENTICATED message, so a caller cannot learn which part was wrong.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ledgerx.db.engine import Database
from ledgerx.db.models import ApiKey
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.changes import ProjectChanges
from ledgerx.domain.errors import BadInput, Conflict, NotFound, Unauthenticated
from ledgerx.domain.tenancy.key_cache import Verified, VerifiedKeys
from ledgerx.domain.tenancy.records import ApiKeyRecord
from ledgerx.domain.tenancy.scopes import validate as validate_scope_names
from ledgerx.ids import encode, uuid7

log = logging.getLogger("ledgerx.api_keys")

TOKEN_PREFIX = "lx_"
PUBLIC_ID_LENGTH = 12
SECRET_BYTES = 32
# Crockford base32 in lower case (no i, l, o, u): unambiguous when read aloud or copied by hand.
_PUBLIC_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_TOKEN = re.compile(rf"lx_([{_PUBLIC_ALPHABET}]{{{PUBLIC_ID_LENGTH}}})_([A-Za-z0-9_-]{{43}})")

# lastUsedAt is written at most once per this interval per key (see `_maybe_touch`).
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)

_INVALID = "invalid API key"
# Compared against when the public id is unknown, so that path does the same work as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"ledgerx-no-such-key").digest()

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key together with its plaintext token; the token exists only in this response."""

    key: ApiKeyRecord
    secret: str


def prefix_of(key: ApiKey | ApiKeyRecord) -> str:
    return f"{TOKEN_PREFIX}{key.public_id}"


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _new_public_id() -> str:
    return "".join(secrets.choice(_PUBLIC_ALPHABET) for _ in range(PUBLIC_ID_LENGTH))


def _new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def _token(public_id: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}{public_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """`(public_id, secret)` of a well-formed token, else None (checked before any database work)."""
    m = _TOKEN.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


def validate_name(name: str) -> str:
    n = name.strip()
    if not 1 <= len(n) <= 200:
        raise BadInput("name must be 1 to 200 characters", field="name")
    return n


def snapshot(key: ApiKey) -> dict[str, object]:
    """What the audit log records about a key: never a secret or a hash."""
    return {
        "name": key.name,
        "prefix": prefix_of(key),
        "scopes": list(key.scopes),
        "rotatedAt": key.rotated_at.isoformat() if key.rotated_at else None,
        "previousExpiresAt": key.previous_expires_at.isoformat() if key.previous_expires_at else None,
        "revokedAt": key.revoked_at.isoformat() if key.revoked_at else None,
    }


async def create(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    *,
    name: str,
    scopes: Iterable[str],
) -> IssuedKey:
    """A new key of the project; the caller has checked that `actor` is a project admin."""
    clean_name = validate_name(name)
    clean_scopes = validate_scope_names(scopes)
    for attempt in range(3):
        secret = _new_secret()
        key = ApiKey(
            id=uuid7(),
            project_id=project_id,
            name=clean_name,
            public_id=_new_public_id(),
            secret_hash=hash_secret(secret),
            scopes=clean_scopes,
            created_by=actor.id if actor.type == "user" else None,
        )
        try:
            async with db.transaction(project_id=project_id) as s:
                s.add(key)
                await s.flush()
                await s.refresh(key)  # created_at from the database
                await audit.record(
                    s,
                    actor,
                    "api_key.create",
                    project_id=project_id,
                    target_type="api_key",
                    target_id=encode("api_key", key.id),
                    after=snapshot(key),
                )
        except IntegrityError:
            # Only the public id is unique; 60 random bits make this astronomically rare.
            if attempt == 2:
                raise
            continue
        return IssuedKey(ApiKeyRecord.of(key), _token(key.public_id, secret))
    raise AssertionError("unreachable")  # pragma: no cover


async def project_of(db: Database, key_id: uuid.UUID) -> uuid.UUID | None:
    """The project a key belongs to, found on the explicit system path (the caller checks access next).

    The answer is only used to authorize against that project; the caller must answer an outsider
    exactly as it answers a key that does not exist ("API key not found"), or the id leaks.
    """
    async with db.transaction(system=True) as s:
        return (await s.execute(select(ApiKey.project_id).where(ApiKey.id == key_id))).scalar_one_or_none()


async def get(db: Database, project_id: uuid.UUID, key_id: uuid.UUID) -> ApiKeyRecord:
    async with db.transaction(project_id=project_id) as s:
        key = (
            await s.execute(select(ApiKey).where(ApiKey.id == key_id, ApiKey.project_id == project_id))
        ).scalar_one_or_none()
    if key is None:
        raise NotFound("API key not found", field="id")
    return ApiKeyRecord.of(key)


async def revoke(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    key_id: uuid.UUID,
    *,
    changes: ProjectChanges,
    clock: Clock = utcnow,
) -> ApiKeyRecord:
    """Revoke at once, the overlapping previous secret too (its open streams end: an access change
    of the project is announced). Revoking a revoked key changes nothing."""
    async with db.transaction(project_id=project_id) as s:
        key = (
            await s.execute(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.project_id == project_id).with_for_update()
            )
        ).scalar_one_or_none()
        if key is None:
            raise NotFound("API key not found", field="id")
        if key.revoked_at is not None:
            return ApiKeyRecord.of(key)
        before = snapshot(key)
        key.revoked_at = clock()
        key.previous_secret_hash = None
        key.previous_expires_at = None
        await s.flush()
        await audit.record(
            s,
            actor,
            "api_key.revoke",
            project_id=project_id,
            target_type="api_key",
            target_id=encode("api_key", key.id),
            before=before,
            after=snapshot(key),
        )
    await changes.access_changed(project_id, "api_key.revoke")
    return ApiKeyRecord.of(key)


async def rotate(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    key_id: uuid.UUID,
    *,
    overlap_seconds: int,
    changes: ProjectChanges,
    clock: Clock = utcnow,
) -> IssuedKey:
    """A new secret for the same key (same id, public id and scopes); the current secret stays valid
    for `overlap_seconds` (0: it dies now) so deployments can switch without downtime."""
    if overlap_seconds < 0:
        raise BadInput("the rotation overlap cannot be negative", field="overlap")
    secret = _new_secret()
    async with db.transaction(project_id=project_id) as s:
        key = (
            await s.execute(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.project_id == project_id).with_for_update()
            )
        ).scalar_one_or_none()
        if key is None:
            raise NotFound("API key not found", field="id")
        if key.revoked_at is not None:
            raise Conflict("a revoked API key cannot be rotated; create a new key", field="id")
        before = snapshot(key)
        now = clock()
        if overlap_seconds > 0:
            key.previous_secret_hash = key.secret_hash
            key.previous_expires_at = now + dt.timedelta(seconds=overlap_seconds)
        else:
            key.previous_secret_hash = None
            key.previous_expires_at = None
        key.secret_hash = hash_secret(secret)
        key.rotated_at = now
        await s.flush()
        await audit.record(
            s,
            actor,
            "api_key.rotate",
            project_id=project_id,
            target_type="api_key",
            target_id=encode("api_key", key.id),
            before=before,
            after=snapshot(key),
        )
    await changes.access_changed(project_id, "api_key.rotate")
    return IssuedKey(ApiKeyRecord.of(key), _token(key.public_id, secret))


async def list_page(db: Database, project_id: uuid.UUID, *, limit: int, after: uuid.UUID | None) -> list[ApiKeyRecord]:
    """The project's keys, revoked ones included, newest first; `limit + 1` rows so callers see more exist."""
    async with db.transaction(project_id=project_id) as s:
        q = select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.id.desc()).limit(limit + 1)
        if after is not None:
            q = q.where(ApiKey.id < after)
        return [ApiKeyRecord.of(k) for k in (await s.execute(q)).scalars()]


async def authenticate(
    db: Database, token: str, *, clock: Clock = utcnow, cache: VerifiedKeys | None = None
) -> Principal:
    """The principal of a bearer `lx_…` token, or UNAUTHENTICATED (one message for every failure).
    With `cache`, a key verified recently on this instance is answered from memory (key_cache.py)."""
    parsed = parse_token(token.strip())
    if parsed is None:
        raise Unauthenticated(_INVALID)
    public_id, secret = parsed
    presented = hash_secret(secret)
    digest = (public_id, presented)
    hit = cache.get(digest) if cache is not None else None
    if hit is not None:
        if time.monotonic() >= hit.touch_after:  # lastUsedAt may be due: only then the clock is read
            assert hit.principal.api_key_id is not None
            assert hit.principal.project_id is not None
            now = clock()
            if _maybe_touch(db, hit.principal.api_key_id, hit.principal.project_id, hit.last_used_at, now):
                hit.last_used_at = now
            hit.touch_after = _touch_after(hit.last_used_at, now)
        return hit.principal
    epoch = cache.epoch if cache is not None else 0
    # The project is unknown until the key is found: the explicit cross-project (system) path, reading
    # one row by its unique public id and nothing else.
    # Runs on every request made with a key: one raw statement, not an ORM session.
    async with db.raw(system=True) as conn:
        row = await conn.fetchrow(_LOOKUP, public_id)
    now = clock()
    # Both comparisons always run: the time taken does not tell current from previous secrets.
    current_ok = hmac.compare_digest(presented, row["secret_hash"] if row is not None else _DUMMY_HASH)
    previous_ok = hmac.compare_digest(
        presented, row["previous_secret_hash"] if row is not None and row["previous_secret_hash"] else _DUMMY_HASH
    )
    if row is None or row["revoked_at"] is not None:
        raise Unauthenticated(_INVALID)
    valid_for: float | None = None
    if not current_ok:
        overlap_open = row["previous_expires_at"] is not None and row["previous_expires_at"] > now
        if not (previous_ok and row["previous_secret_hash"] is not None and overlap_open):
            raise Unauthenticated(_INVALID)
        valid_for = (row["previous_expires_at"] - now).total_seconds()
    last_used = now if _maybe_touch(db, row["id"], row["project_id"], row["last_used_at"], now) else row["last_used_at"]
    principal = Principal(
        kind="api_key", api_key_id=row["id"], project_id=row["project_id"], scopes=frozenset(row["scopes"])
    )
    if cache is not None:
        entry = Verified(principal, last_used, _touch_after(last_used, now))
        cache.put(digest, entry, loaded_at_epoch=epoch, valid_for=valid_for)
    return principal


_LOOKUP = (
    "SELECT id, project_id, secret_hash, previous_secret_hash, previous_expires_at, scopes, revoked_at,"
    " last_used_at FROM api_keys WHERE public_id = $1"
)


# --- lastUsedAt --------------------------------------------------------------------------------
#
# Writing last_used_at on every request would turn every read into a row write (WAL, vacuum, lock
# contention on a hot key). Instead it has a resolution of LAST_USED_RESOLUTION: authentication
# already reads the stored value, and only when it is missing or older than that does it schedule
# a conditional UPDATE (`… WHERE last_used_at IS NULL OR last_used_at < now() - 60 s`), so a busy key
# costs at most one write per minute however many app instances serve it; concurrent requests on one
# instance share one pending write. The write runs as a background task after the response path has
# moved on (fire-and-forget): it adds no latency and a failure is logged, never surfaced, because
# lastUsedAt is informational. `flush_last_used()` awaits pending writes (tests, shutdown).

_inflight: dict[uuid.UUID, asyncio.Task[None]] = {}


def _touch_after(last_used_at: dt.datetime | None, now: dt.datetime) -> float:
    """The time.monotonic() from which the next use of a key may be due a lastUsedAt write."""
    if last_used_at is None:
        return 0.0
    return time.monotonic() + (LAST_USED_RESOLUTION - (now - last_used_at)).total_seconds()


def _maybe_touch(
    db: Database, key_id: uuid.UUID, project_id: uuid.UUID, last_used_at: dt.datetime | None, now: dt.datetime
) -> bool:
    """Schedule the lastUsedAt write when it is due; True when one is (scheduled or in flight)."""
    if last_used_at is not None and now - last_used_at < LAST_USED_RESOLUTION:
        return False
    pending = _inflight.get(key_id)
    if pending is not None and not pending.done():
        return True
    task = asyncio.get_running_loop().create_task(_touch(db, key_id, project_id))
    _inflight[key_id] = task
    task.add_done_callback(lambda t: _inflight.pop(key_id, None) if _inflight.get(key_id) is t else None)
    return True


async def _touch(db: Database, key_id: uuid.UUID, project_id: uuid.UUID) -> None:
    try:
        async with db.transaction(project_id=project_id) as s:
            await s.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == key_id,
                    or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < func.now() - LAST_USED_RESOLUTION),
                )
                .values(last_used_at=func.now())
            )
    except Exception:  # informational only: never fail or crash anything over it
        log.warning("could not record API key use", exc_info=True, extra={"api_key_id": str(key_id)})


async def flush_last_used() -> None:
    """Wait for this event loop's pending lastUsedAt writes (tests and shutdown call it)."""
    loop = asyncio.get_running_loop()
    while pending := [t for t in _inflight.values() if t.get_loop() is loop and not t.done()]:
        await asyncio.gather(*pending, return_exceptions=True)
