"""Email verification: the mailed link (through a real SMTP server), single use, expiry, resend,
addMember's invitation for unverified addresses, invitations proving the address, Google's word,
and migration 0007's handling of existing users and stale invitations."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from ledgerx import ids
from ledgerx.app import create_app
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import upgrade
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, new_email, sign_up
from tests.tenancy_helpers import (
    VERIFY_EMAIL,
    create_project,
    mailed_verification_token,
    owner_sql,
    sign_up_verified,
    verify_email,
)
from tests.test_invites import SmtpServer, fast_mail

ME = "{ me { id email emailVerified } }"
RESEND = "mutation { resendVerification }"
ADD_MEMBER = "mutation($i: AddMemberInput!) { addMember(input: $i) { id role user { id email } } }"
MEMBERS = "query($id: ID!) { project(id: $id) { members { role user { id email } } } }"
INVITES = "query($p: ID!) { invites(projectId: $p) { edges { node { id email role status } } } }"
ACCEPT = "mutation($t: String!) { acceptInvite(token: $t) { member { role } } }"
LINK = re.compile(r"(https?://\S+/verify-email\?token=([A-Za-z0-9_-]+))")
INVITE_LINK = re.compile(r"/invite\?token=([A-Za-z0-9_-]+)")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def mail_gql(settings: Settings, smtp: SmtpServer) -> AsyncIterator[tuple[GQL, Services]]:
    """The app with SMTP configured and its lifespan running (the outbox sender is the app's own)."""
    svc = Services.build(fast_mail(settings, smtp.url))
    app = create_app(svc.settings, svc)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("203.0.113.21", 4321))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield GQL(c), svc
    finally:
        await svc.close()


async def invite_token(email: str, settings: Settings) -> str:
    rows = await owner_sql(
        settings,
        "SELECT body_text FROM mail_outbox WHERE to_addr = $1 AND kind = 'invite' ORDER BY id DESC LIMIT 1",
        email,
    )
    m = INVITE_LINK.search(rows[0]["body_text"])
    assert m
    return m.group(1)


@pytest.mark.background_loops
async def test_sign_up_mails_a_single_use_link_that_verifies_the_address(
    mail_gql: tuple[GQL, Services], smtp: SmtpServer
) -> None:
    gql, svc = mail_gql
    user = await sign_up(gql)
    assert (await gql.ok(ME, token=user.token))["me"]["emailVerified"] is False

    [msg] = await smtp.inbox.wait_for(user.email)
    assert msg["Subject"] == "Confirm your email address for LedgerX"
    link, token = LINK.search(msg.get_content()).groups()  # type: ignore[union-attr]
    assert link.startswith("https://app.ledgerx.test/verify-email?token=")  # LEDGERX_PUBLIC_URL
    # Only the hash is stored, with the 48 h expiry.
    rows = await owner_sql(
        svc.settings,
        "SELECT v.token_hash, v.expires_at - v.created_at AS ttl, v.email FROM email_verifications v"
        " JOIN users u ON u.id = v.user_id WHERE u.email = $1",
        user.email,
    )
    assert [bytes(r["token_hash"]) for r in rows] == [hashlib.sha256(token.encode()).digest()]
    assert rows[0]["ttl"] == dt.timedelta(hours=48)

    # Opening the link needs no sign-in (often another device).
    verified = (await gql.ok(VERIFY_EMAIL, {"t": token}))["verifyEmail"]
    assert verified == {"id": user.user_id, "emailVerified": True}
    assert (await gql.ok(ME, token=user.token))["me"]["emailVerified"] is True
    # Single use.
    again = await gql.error(VERIFY_EMAIL, {"t": token})
    assert (again["code"], again["field"]) == ("NOT_FOUND", "token")
    assert (await gql.error(VERIFY_EMAIL, {"t": "made-up"}))["code"] == "NOT_FOUND"
    # Verified users have nothing to resend.
    assert (await gql.error(RESEND, token=user.token))["code"] == "CONFLICT"
    actions = await owner_sql(
        svc.settings,
        "SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id",
        user.user_id,
    )
    assert [r["action"] for r in actions] == ["user.sign_up", "user.email_verified"]


async def test_links_expire_and_resend_replaces_them_with_a_limit(gql: GQL, services: Services) -> None:
    user = await sign_up(gql)
    first = await mailed_verification_token(user.email)

    # Past EMAIL_VERIFICATION_TTL (an injected clock, no sleeping) the link is dead.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=48, seconds=1)
    services.auth.verifier.clock = lambda: later
    assert (await gql.error(VERIFY_EMAIL, {"t": first}))["code"] == "NOT_FOUND"
    services.auth.verifier.clock = lambda: dt.datetime.now(dt.UTC)

    # resendVerification needs a signed-in user.
    assert (await gql.error(RESEND))["code"] == "UNAUTHENTICATED"
    assert (await gql.ok(RESEND, token=user.token))["resendVerification"] is True
    second = await mailed_verification_token(user.email)
    assert second != first
    assert (await gql.ok(RESEND, token=user.token))["resendVerification"] is True
    third = await mailed_verification_token(user.email)
    assert (await gql.ok(RESEND, token=user.token))["resendVerification"] is True
    # The fourth in a row is refused with a retry hint; no mail is written for it.
    fourth = await gql.error(RESEND, token=user.token)
    assert fourth["code"] == "RATE_LIMITED"
    assert fourth["retryAfter"] >= 1
    mails = await owner_sql(
        services.settings,
        "SELECT count(*) AS n FROM mail_outbox WHERE to_addr = $1 AND kind = 'email_verification'",
        user.email,
    )
    assert mails[0]["n"] == 4  # sign-up + three resends

    # A newer link kills the older ones.
    latest = await mailed_verification_token(user.email)
    for old in (second, third):
        assert (await gql.error(VERIFY_EMAIL, {"t": old}))["code"] == "NOT_FOUND"
    assert (await gql.ok(VERIFY_EMAIL, {"t": latest}))["verifyEmail"]["emailVerified"] is True


async def test_concurrent_uses_of_one_link_verify_once(gql: GQL, services: Services) -> None:
    user = await sign_up(gql)
    token = await mailed_verification_token(user.email)
    results = await asyncio.gather(*[gql(VERIFY_EMAIL, {"t": token}) for _ in range(8)])
    assert len([r for r in results if not r.get("errors")]) == 1
    assert {r["errors"][0]["extensions"]["code"] for r in results if r.get("errors")} == {"NOT_FOUND"}
    rows = await owner_sql(
        services.settings,
        "SELECT count(*) AS n FROM audit_log WHERE action = 'user.email_verified' AND target_id = $1",
        user.user_id,
    )
    assert rows[0]["n"] == 1


async def test_add_member_adds_only_verified_accounts_and_otherwise_invites(gql: GQL, services: Services) -> None:
    owner = await sign_up_verified(gql)
    pid = await create_project(gql, owner)

    # The attack: someone signs up first with a colleague's address (and cannot verify it).
    colleague = new_email("colleague")
    squatter = await sign_up(gql, colleague)
    err = await gql.error(
        ADD_MEMBER, {"i": {"projectId": pid, "email": colleague.upper(), "role": "ADMIN"}}, token=owner.token
    )
    assert (err["code"], err["field"]) == ("INVITATION_SENT", "email")
    assert err["inviteCreated"] is True
    assert "invitation" in err["message"]
    members = (await gql.ok(MEMBERS, {"id": pid}, token=owner.token))["project"]["members"]
    assert squatter.user_id not in [m["user"]["id"] for m in members]
    assert (await gql.error(MEMBERS, {"id": pid}, token=squatter.token))["code"] == "NOT_FOUND"
    # The invitation went to the mailbox (which the squatter does not read).
    invites = (await gql.ok(INVITES, {"p": pid}, token=owner.token))["invites"]["edges"]
    assert [n["node"] for n in invites] == [
        {"id": err["inviteId"], "email": colleague, "role": "ADMIN", "status": "PENDING"}
    ]
    assert await invite_token(colleague, services.settings)

    # Asking again reports the open invitation instead of mailing another.
    again = await gql.error(
        ADD_MEMBER, {"i": {"projectId": pid, "email": colleague, "role": "ADMIN"}}, token=owner.token
    )
    assert (again["code"], again["inviteId"], again["inviteCreated"]) == ("INVITATION_SENT", err["inviteId"], False)

    # An address with no account gets the same answer (addMember tells nothing about accounts).
    unknown = await gql.error(
        ADD_MEMBER, {"i": {"projectId": pid, "email": new_email(), "role": "VIEWER"}}, token=owner.token
    )
    assert unknown["code"] == "INVITATION_SENT"

    # Once verified, the account is added directly.
    await verify_email(gql, squatter)
    added = (
        await gql.ok(ADD_MEMBER, {"i": {"projectId": pid, "email": colleague, "role": "VIEWER"}}, token=owner.token)
    )["addMember"]
    assert added["user"]["id"] == squatter.user_id
    assert added["role"] == "VIEWER"


async def test_accepting_an_invitation_verifies_the_address(gql: GQL, services: Services) -> None:
    owner = await sign_up_verified(gql)
    pid = await create_project(gql, owner)
    addr = new_email("invited")
    invitee = await sign_up(gql, addr)
    pending_link = await mailed_verification_token(addr)
    await gql.error(ADD_MEMBER, {"i": {"projectId": pid, "email": addr, "role": "MEMBER"}}, token=owner.token)
    token = await invite_token(addr, services.settings)

    assert (await gql.ok(ACCEPT, {"t": token}, token=invitee.token))["acceptInvite"]["member"]["role"] == "MEMBER"
    assert (await gql.ok(ME, token=invitee.token))["me"]["emailVerified"] is True
    # The mailed verification link retired with it.
    assert (await gql.error(VERIFY_EMAIL, {"t": pending_link}))["code"] == "NOT_FOUND"
    rows = await owner_sql(
        services.settings,
        "SELECT after FROM audit_log WHERE action = 'user.email_verified' AND target_id = $1",
        invitee.user_id,
    )
    assert len(rows) == 1 and '"invite"' in rows[0]["after"]


# -- migration 0007 on existing data ---------------------------------------------------------------


async def test_migration_verifies_invite_acceptors_and_revokes_stale_invitations(scratch_database: str) -> None:
    await asyncio.to_thread(upgrade, scratch_database, "0006_payments")
    conn = await asyncpg.connect(asyncpg_dsn(scratch_database))
    try:
        u = {k: ids.uuid7() for k in ("owner", "acceptor", "squatter", "demoted", "google")}
        for k, uid in u.items():
            await conn.execute(
                "INSERT INTO users (id, email, email_verified, google_sub) VALUES ($1, $2, $3, $4)",
                uid,
                f"{k}@example.com",
                k == "google",
                "g-1" if k == "google" else None,
            )
        pid = ids.uuid7()
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'P')", pid)
        for k, role in (("owner", "OWNER"), ("acceptor", "MEMBER"), ("demoted", "MEMBER")):
            await conn.execute(
                "INSERT INTO project_members (id, project_id, user_id, role) VALUES ($1, $2, $3, $4)",
                ids.uuid7(),
                pid,
                u[k],
                role,
            )

        async def invite(email: str, by: str, **cols: object) -> object:
            iid = ids.uuid7()
            await conn.execute(
                "INSERT INTO invites (id, project_id, email, role, token_hash, invited_by, expires_at,"
                " accepted_at, accepted_by) VALUES ($1, $2, $3, 'MEMBER', $4, $5, now() + interval '1 day', $6, $7)",
                iid,
                pid,
                email,
                secrets.token_bytes(32),
                u[by],
                cols.get("accepted_at"),
                cols.get("accepted_by"),
            )
            return iid

        await invite("ACCEPTOR@example.com", "owner", accepted_at=dt.datetime.now(dt.UTC), accepted_by=u["acceptor"])
        # The squatter accepted an invitation sent to another address: proves nothing about theirs.
        await invite("other@example.com", "owner", accepted_at=dt.datetime.now(dt.UTC), accepted_by=u["squatter"])
        by_owner = await invite("fresh@example.com", "owner")
        by_demoted = await invite("stale@example.com", "demoted")  # made while admin, now MEMBER
    finally:
        await conn.close()

    await asyncio.to_thread(upgrade, scratch_database, "head")

    conn = await asyncpg.connect(asyncpg_dsn(scratch_database))
    try:
        verified = {
            r["email"]: r["email_verified"] for r in await conn.fetch("SELECT email, email_verified FROM users")
        }
        revoked = {r["id"]: r["revoked_at"] is not None for r in await conn.fetch("SELECT id, revoked_at FROM invites")}
    finally:
        await conn.close()
    assert verified == {
        "owner@example.com": False,
        "acceptor@example.com": True,
        "squatter@example.com": False,
        "demoted@example.com": False,
        "google@example.com": True,
    }
    assert revoked[by_owner] is False
    assert revoked[by_demoted] is True
