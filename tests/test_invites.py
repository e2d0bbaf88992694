"""Invitations end to end: a real local SMTP server (aiosmtpd) receives the mail, the link in it is
peeked without auth and accepted by the invitee; resend, revoke, expiry, wrong email, retries of a
failed send, role checks and cross-project isolation."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import hashlib
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import text

from ledgerx.app import create_app
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.domain.mail import SmtpConfig, redact
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, free_port, new_email, sign_up
from tests.tenancy_helpers import sign_up_verified

CREATE_PROJECT = "mutation($i: CreateProjectInput!) { createProject(input: $i) { id name } }"
ADD_MEMBER = "mutation($i: AddMemberInput!) { addMember(input: $i) { id role } }"
CREATE_INVITE = """
mutation($i: CreateInviteInput!) {
  createInvite(input: $i) {
    id projectId email role status resendCount createdAt expiresAt lastSentAt acceptedAt revokedAt
    invitedBy { id name }
  }
}
"""
RESEND = "mutation($id: ID!) { resendInvite(id: $id) { id status resendCount expiresAt lastSentAt } }"
REVOKE = "mutation($id: ID!) { revokeInvite(id: $id) { id status revokedAt } }"
PEEK = "query($t: String!) { peekInvite(token: $t) { projectName role inviterName expiresAt } }"
ACCEPT = """
mutation($t: String!) {
  acceptInvite(token: $t) {
    invite { id status acceptedAt acceptedBy { id email } }
    member { role user { id email } }
    project { id name viewerRole }
  }
}
"""
MEMBERS = "query($id: ID!) { project(id: $id) { members { role user { id email } } } }"
INVITES = """
query($p: ID!, $first: Int, $after: String) {
  invites(projectId: $p, first: $first, after: $after) {
    edges { cursor node { id email status } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
LINK = re.compile(r"(https?://\S+/invite\?token=([A-Za-z0-9_-]+))")


# -- a real SMTP server -------------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it receives (it runs in the server's thread)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self._lock:
            self.messages.append(msg)
        return "250 Message accepted for delivery"

    def to(self, addr: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if m["To"].lower() == addr.lower()]

    async def wait_for(self, addr: str, count: int = 1, within: float = 10.0) -> list[EmailMessage]:
        """Poll (bounded) until `count` messages to `addr` arrived."""
        deadline = time.monotonic() + within
        while True:
            found = self.to(addr)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no mail to {addr} within {within}s (got {len(found)} of {count})")
            await asyncio.sleep(0.02)


class SmtpServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.inbox = Inbox()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


def fast_mail(settings: Settings, smtp_url: str, **extra: Any) -> Settings:
    return dataclasses.replace(
        settings,
        smtp_url=smtp_url,
        public_url="https://app.ledgerx.test",
        mail_poll_interval=0.2,
        mail_retry_base=0.2,
        mail_retry_max=1.0,
        **extra,
    )


@dataclasses.dataclass
class MailApp:
    gql: GQL
    services: Services


@pytest.fixture
async def mail_app(settings: Settings, smtp: SmtpServer) -> AsyncIterator[MailApp]:
    """The app with SMTP configured; its lifespan runs, so the outbox sender loop is the app's own."""
    svc = Services.build(fast_mail(settings, smtp.url))
    app = create_app(svc.settings, svc)
    try:
        async with app.router.lifespan_context(app):
            assert svc.mail_sender is not None
            assert svc.mail_sender.running
            transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4444))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield MailApp(GQL(c), svc)
        assert not svc.mail_sender.running  # the lifespan stopped it
    finally:
        await svc.close()


# -- helpers ------------------------------------------------------------------------------------


async def owner_conn(settings: Settings) -> asyncpg.Connection:
    assert settings.database_url
    return await asyncpg.connect(asyncpg_dsn(settings.database_url))


async def new_project(gql: GQL, owner: SignedIn, name: str = "Acme Billing") -> str:
    data = await gql.ok(
        CREATE_PROJECT, {"i": {"name": name, "externalKey": f"ext-{new_email('k')[:14]}"}}, token=owner.token
    )
    pid: str = data["createProject"]["id"]
    return pid


async def invite(gql: GQL, admin: SignedIn, project_id: str, addr: str, role: str = "MEMBER") -> dict[str, Any]:
    data = await gql.ok(CREATE_INVITE, {"i": {"projectId": project_id, "email": addr, "role": role}}, token=admin.token)
    inv: dict[str, Any] = data["createInvite"]
    return inv


async def sent_row(conn: asyncpg.Connection, columns: str, addr: str, *, within: float) -> asyncpg.Record:
    """The outbox row of `addr` once its `sent_at` is set (polls, bounded; the caller asserts)."""
    deadline = time.monotonic() + within
    while True:
        row = await conn.fetchrow(f"SELECT {columns} FROM mail_outbox WHERE to_addr = $1", addr)
        if row["sent_at"] is not None or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.02)


async def outbox_token(settings: Settings, addr: str) -> str:
    """The newest invitation token mailed to `addr`, read from the (unsent) outbox as the owner."""
    conn = await owner_conn(settings)
    try:
        body = await conn.fetchval(
            "SELECT body_text FROM mail_outbox WHERE to_addr = $1 AND kind = 'invite' ORDER BY id DESC LIMIT 1",
            addr.lower(),
        )
    finally:
        await conn.close()
    m = LINK.search(body or "")
    assert m, body
    return m.group(2)


def token_in(msg: EmailMessage) -> tuple[str, str]:
    body = msg.get_content()
    m = LINK.search(body)
    assert m, body
    return m.group(1), m.group(2)


async def member_of(gql: GQL, project_id: str, owner: SignedIn, user: SignedIn) -> str | None:
    members = (await gql.ok(MEMBERS, {"id": project_id}, token=owner.token))["project"]["members"]
    return next((m["role"] for m in members if m["user"]["id"] == user.user_id), None)


async def audit_actions(settings: Settings, target_id: str) -> list[str]:
    conn = await owner_conn(settings)
    try:
        rows = await conn.fetch("SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id", target_id)
    finally:
        await conn.close()
    return [r["action"] for r in rows]


async def add_member(gql: GQL, owner: SignedIn, project_id: str, role: str) -> SignedIn:
    u = await sign_up_verified(gql)
    await gql.ok(ADD_MEMBER, {"i": {"projectId": project_id, "email": u.email, "role": role}}, token=owner.token)
    return u


# -- the lifecycle through SMTP ------------------------------------------------------------------


@pytest.mark.background_loops
async def test_invitation_lifecycle_through_a_real_smtp_server(mail_app: MailApp, smtp: SmtpServer) -> None:
    gql, settings = mail_app.gql, mail_app.services.settings
    owner = await sign_up(gql)
    pid = await new_project(gql, owner, "Acme Billing")
    addr = new_email("invitee")

    inv = await invite(gql, owner, pid, addr.upper(), "ADMIN")
    assert inv["email"] == addr  # stored normalized
    assert inv["role"] == "ADMIN"
    assert inv["status"] == "PENDING"
    assert inv["resendCount"] == 0
    assert inv["invitedBy"]["id"] == owner.user_id
    assert "token" not in inv
    created = dt.datetime.fromisoformat(inv["createdAt"])
    assert dt.datetime.fromisoformat(inv["expiresAt"]) - created == dt.timedelta(days=7)

    # The sender loop delivers it through the SMTP server.
    [msg] = await smtp.inbox.wait_for(addr)
    assert msg["Subject"] == "You're invited to join Acme Billing on LedgerX"
    assert msg["From"] == settings.mail_from
    link, token = token_in(msg)
    assert link.startswith("https://app.ledgerx.test/invite?token=")
    assert len(token) >= 43

    # Only the hash is stored; once sent, the outbox copy of the link is blanked.
    conn = await owner_conn(settings)
    try:
        row = await conn.fetchrow("SELECT token_hash FROM invites WHERE email = $1", addr)
        assert bytes(row["token_hash"]) == hashlib.sha256(token.encode()).digest()
        # The SMTP server has the message before the sender commits `sent_at`: wait (bounded).
        out = await sent_row(conn, "attempts, sent_at, body_text, kind", addr, within=10)
        assert out["kind"] == "invite"
        assert out["attempts"] == 1
        assert out["sent_at"] is not None
        assert token not in out["body_text"]
        assert "token=[redacted]" in out["body_text"]
    finally:
        await conn.close()

    # Anyone holding the link may peek, and learns exactly this much.
    body = await gql(PEEK, {"t": token})
    assert not body.get("errors")
    peek = body["data"]["peekInvite"]
    assert set(peek) == {"projectName", "role", "inviterName", "expiresAt"}
    assert peek["projectName"] == "Acme Billing"
    assert peek["role"] == "ADMIN"
    assert peek["inviterName"] == "Test User"
    assert peek["expiresAt"] == inv["expiresAt"]

    # Accepting needs a sign-in.
    assert (await gql.error(ACCEPT, {"t": token}))["code"] == "UNAUTHENTICATED"

    # The invitee signs up (email in another case) and accepts.
    invitee = await sign_up(gql, addr.replace("invitee", "INVITEE"))
    accepted = (await gql.ok(ACCEPT, {"t": token}, token=invitee.token))["acceptInvite"]
    assert accepted["invite"]["status"] == "ACCEPTED"
    assert accepted["invite"]["acceptedBy"]["id"] == invitee.user_id
    assert accepted["member"]["role"] == "ADMIN"
    assert accepted["project"] == {"id": pid, "name": "Acme Billing", "viewerRole": "ADMIN"}
    assert await member_of(gql, pid, owner, invitee) == "ADMIN"
    # The new admin reaches the project.
    assert (await gql.ok(MEMBERS, {"id": pid}, token=invitee.token))["project"]["members"]

    # Single use: the token is dead now for peeking and accepting.
    assert (await gql.error(PEEK, {"t": token}))["code"] == "NOT_FOUND"
    assert (await gql.error(ACCEPT, {"t": token}, token=invitee.token))["code"] == "NOT_FOUND"

    assert await audit_actions(settings, inv["id"]) == ["invite.create", "invite.accept"]


@pytest.mark.background_loops
async def test_resend_mails_a_new_token_and_kills_the_old_one(mail_app: MailApp, smtp: SmtpServer) -> None:
    gql, svc = mail_app.gql, mail_app.services
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    addr = new_email("resend")
    inv = await invite(gql, owner, pid, addr)
    [first] = await smtp.inbox.wait_for(addr)
    _, old_token = token_in(first)

    # Within the cool-down: refused with a retry hint, nothing changes.
    err = await gql.error(RESEND, {"id": inv["id"]}, token=owner.token)
    assert err["code"] == "RATE_LIMITED"
    assert 1 <= err["retryAfter"] <= svc.settings.invite_resend_cooldown
    assert mail_app.gql.last is not None
    assert mail_app.gql.last.status_code == 429

    # Past the cool-down (an injected clock, no sleeping).
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=svc.settings.invite_resend_cooldown + 1)
    svc.invites.clock = lambda: later
    resent = (await gql.ok(RESEND, {"id": inv["id"]}, token=owner.token))["resendInvite"]
    assert resent["resendCount"] == 1
    assert dt.datetime.fromisoformat(resent["expiresAt"]) == later + dt.timedelta(days=7)
    msgs = await smtp.inbox.wait_for(addr, count=2)
    _, new_token = token_in(msgs[1])
    assert new_token != old_token

    assert (await gql.error(PEEK, {"t": old_token}))["code"] == "NOT_FOUND"
    assert (await gql.ok(PEEK, {"t": new_token}))["peekInvite"]["role"] == "MEMBER"
    invitee = await sign_up(gql, addr)
    assert (await gql.error(ACCEPT, {"t": old_token}, token=invitee.token))["code"] == "NOT_FOUND"
    assert (await gql.ok(ACCEPT, {"t": new_token}, token=invitee.token))["acceptInvite"]["member"]["role"] == "MEMBER"
    # An accepted invitation cannot be resent or revoked.
    assert (await gql.error(RESEND, {"id": inv["id"]}, token=owner.token))["code"] == "CONFLICT"
    assert (await gql.error(REVOKE, {"id": inv["id"]}, token=owner.token))["code"] == "CONFLICT"
    assert await audit_actions(svc.settings, inv["id"]) == ["invite.create", "invite.resend", "invite.accept"]


async def test_failed_sends_are_retried_and_recorded_until_the_server_answers(settings: Settings) -> None:
    port = free_port()  # nothing listens here yet
    svc = Services.build(fast_mail(settings, f"smtp://127.0.0.1:{port}", smtp_timeout=2.0))
    server: SmtpServer | None = None
    try:
        transport = httpx.ASGITransport(app=create_app(svc.settings, svc))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            gql = GQL(c)
            owner = await sign_up(gql)
            pid = await new_project(gql, owner)
            addr = new_email("retry")
            await invite(gql, owner, pid, addr)

        sender = svc.mail_sender
        assert sender is not None
        # The invitation and the owner's sign-up verification mail: claimed, the connection refused.
        assert await sender.run_once() == 2
        conn = await owner_conn(settings)
        try:
            row = await conn.fetchrow(
                "SELECT attempts, last_error, sent_at, next_attempt_at > now() AS later FROM mail_outbox"
                " WHERE to_addr = $1",
                addr,
            )
            assert row["attempts"] == 1
            assert row["sent_at"] is None
            assert row["last_error"]
            assert "refused" in row["last_error"].lower() or "connect" in row["last_error"].lower()
            assert row["later"]  # backed off, not retried in a hot loop
            # Not due yet: another round right away claims nothing.
            assert await sender.run_once() == 0

            # The server comes up on that port; the loop retries and delivers.
            server = SmtpServer(port)
            server.start()
            sender.start()
            [msg] = await server.inbox.wait_for(addr)
            _, token = token_in(msg)
            assert len(token) >= 43
            row = await sent_row(conn, "attempts, last_error, sent_at", addr, within=5)
            assert row["sent_at"] is not None
            assert row["attempts"] >= 2
            assert row["last_error"]  # the history of the failure stays
        finally:
            await conn.close()
        await sender.stop()
        assert len(server.inbox.to(addr)) == 1  # delivered once
    finally:
        if server is not None:
            server.stop()
        await svc.close()


# -- rules without a mail server (tokens read from the outbox) -------------------------------------


async def test_revoked_and_expired_invitations_cannot_be_accepted(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)

    addr = new_email("revoked")
    inv = await invite(gql, owner, pid, addr)
    token = await outbox_token(services.settings, addr)
    revoked = (await gql.ok(REVOKE, {"id": inv["id"]}, token=owner.token))["revokeInvite"]
    assert revoked["status"] == "REVOKED"
    assert revoked["revokedAt"]
    # Revoking again changes nothing (and writes no second audit row).
    assert (await gql.ok(REVOKE, {"id": inv["id"]}, token=owner.token))["revokeInvite"]["revokedAt"] == revoked[
        "revokedAt"
    ]
    assert (await gql.error(RESEND, {"id": inv["id"]}, token=owner.token))["code"] == "CONFLICT"
    invitee = await sign_up(gql, addr)
    assert (await gql.error(PEEK, {"t": token}))["code"] == "NOT_FOUND"
    assert (await gql.error(ACCEPT, {"t": token}, token=invitee.token))["code"] == "NOT_FOUND"
    assert await member_of(gql, pid, owner, invitee) is None
    assert await audit_actions(services.settings, inv["id"]) == ["invite.create", "invite.revoke"]

    # Expired: the clock moves past the 7 days.
    addr2 = new_email("expired")
    inv2 = await invite(gql, owner, pid, addr2)
    token2 = await outbox_token(services.settings, addr2)
    invitee2 = await sign_up(gql, addr2)
    services.invites.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=7, seconds=1)
    assert (await gql.error(PEEK, {"t": token2}))["code"] == "NOT_FOUND"
    assert (await gql.error(ACCEPT, {"t": token2}, token=invitee2.token))["code"] == "NOT_FOUND"
    listed = (await gql.ok(INVITES, {"p": pid}, token=owner.token))["invites"]["edges"]
    assert {e["node"]["id"]: e["node"]["status"] for e in listed}[inv2["id"]] == "EXPIRED"
    # A fresh invitation replaces the expired one (which is closed), and works.
    inv3 = await invite(gql, owner, pid, addr2)
    assert inv3["id"] != inv2["id"]
    token3 = await outbox_token(services.settings, addr2)
    assert (await gql.ok(ACCEPT, {"t": token3}, token=invitee2.token))["acceptInvite"]["member"]["role"] == "MEMBER"

    # Expiry is stored data too: a row whose expires_at passed (set by the owner) is dead.
    services.invites.clock = lambda: dt.datetime.now(dt.UTC)
    addr4 = new_email("expired-db")
    inv4 = await invite(gql, owner, pid, addr4)
    token4 = await outbox_token(services.settings, addr4)
    conn = await owner_conn(services.settings)
    try:
        await conn.execute(
            "UPDATE invites SET expires_at = now() - interval '1 second', last_sent_at = now() - interval '7 days'"
            " WHERE email = $1",
            addr4,
        )
    finally:
        await conn.close()
    invitee4 = await sign_up(gql, addr4)
    assert (await gql.error(ACCEPT, {"t": token4}, token=invitee4.token))["code"] == "NOT_FOUND"
    # Resending revives it with a new link and a new expiry.
    resent = (await gql.ok(RESEND, {"id": inv4["id"]}, token=owner.token))["resendInvite"]
    assert resent["status"] == "PENDING"
    token5 = await outbox_token(services.settings, addr4)
    assert (await gql.ok(ACCEPT, {"t": token5}, token=invitee4.token))["acceptInvite"]["invite"]["status"] == "ACCEPTED"


async def test_only_the_invited_email_can_accept(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    addr = new_email("right")
    await invite(gql, owner, pid, addr, "VIEWER")
    token = await outbox_token(services.settings, addr)

    stranger = await sign_up(gql)
    err = await gql.error(ACCEPT, {"t": token}, token=stranger.token)
    assert err["code"] == "FORBIDDEN"
    assert await member_of(gql, pid, owner, stranger) is None
    # The owner (already a member, different email) cannot use it either.
    assert (await gql.error(ACCEPT, {"t": token}, token=owner.token))["code"] == "FORBIDDEN"

    # The failed attempts did not use the invitation up.
    right = await sign_up(gql, addr)
    assert (await gql.ok(ACCEPT, {"t": token}, token=right.token))["acceptInvite"]["member"]["role"] == "VIEWER"

    # Garbage tokens are plain NOT_FOUND.
    assert (await gql.error(PEEK, {"t": "nope"}))["code"] == "NOT_FOUND"
    assert (await gql.error(PEEK, {"t": "x" * 5000}))["code"] == "NOT_FOUND"
    assert (await gql.error(ACCEPT, {"t": "nope"}, token=right.token))["code"] == "NOT_FOUND"


async def test_concurrent_accepts_of_one_token_add_one_membership(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    addr = new_email("race")
    await invite(gql, owner, pid, addr)
    token = await outbox_token(services.settings, addr)
    invitee = await sign_up(gql, addr)

    results = await asyncio.gather(*[gql(ACCEPT, {"t": token}, token=invitee.token) for _ in range(8)])
    winners = [r for r in results if not r.get("errors")]
    assert len(winners) == 1
    assert {r["errors"][0]["extensions"]["code"] for r in results if r.get("errors")} == {"NOT_FOUND"}
    members = (await gql.ok(MEMBERS, {"id": pid}, token=owner.token))["project"]["members"]
    assert [m["user"]["id"] for m in members].count(invitee.user_id) == 1


async def test_invite_conflicts_and_input_rules(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    member = await add_member(gql, owner, pid, "MEMBER")

    # Someone already in the project: CONFLICT (any case of the address).
    err = await gql.error(
        CREATE_INVITE, {"i": {"projectId": pid, "email": member.email.upper(), "role": "VIEWER"}}, token=owner.token
    )
    assert err["code"] == "CONFLICT"
    assert err["field"] == "email"

    # OWNER is not an invitation role; a bad address is bad input.
    err = await gql.error(
        CREATE_INVITE, {"i": {"projectId": pid, "email": new_email(), "role": "OWNER"}}, token=owner.token
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "role")
    err = await gql.error(
        CREATE_INVITE, {"i": {"projectId": pid, "email": "not-an-email", "role": "MEMBER"}}, token=owner.token
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "email")

    # A second open invitation for the same address: CONFLICT pointing at the open one.
    addr = new_email("twice")
    first = await invite(gql, owner, pid, addr)
    err = await gql.error(CREATE_INVITE, {"i": {"projectId": pid, "email": addr, "role": "ADMIN"}}, token=owner.token)
    assert err["code"] == "CONFLICT"
    assert err["inviteId"] == first["id"]

    # Someone who joined by another way after the invitation: accepting is a CONFLICT.
    token = await outbox_token(services.settings, addr)
    joined = await sign_up_verified(gql, addr)
    await gql.ok(ADD_MEMBER, {"i": {"projectId": pid, "email": addr, "role": "VIEWER"}}, token=owner.token)
    assert (await gql.error(ACCEPT, {"t": token}, token=joined.token))["code"] == "CONFLICT"
    assert await member_of(gql, pid, owner, joined) == "VIEWER"

    # Wrong id kinds are bad input, unknown ids NOT_FOUND.
    assert (await gql.error(REVOKE, {"id": pid}, token=owner.token))["code"] == "BAD_USER_INPUT"
    unknown = "inv_" + "0" * 26
    assert (await gql.error(REVOKE, {"id": unknown}, token=owner.token))["code"] == "NOT_FOUND"


async def test_members_and_viewers_cannot_manage_invitations(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    admin = await add_member(gql, owner, pid, "ADMIN")
    member = await add_member(gql, owner, pid, "MEMBER")
    viewer = await add_member(gql, owner, pid, "VIEWER")

    inv = await invite(gql, admin, pid, new_email("by-admin"), "ADMIN")  # admins may invite
    for who in (member, viewer):
        err = await gql.error(
            CREATE_INVITE, {"i": {"projectId": pid, "email": new_email(), "role": "VIEWER"}}, token=who.token
        )
        assert err["code"] == "FORBIDDEN"
        assert (await gql.error(RESEND, {"id": inv["id"]}, token=who.token))["code"] == "FORBIDDEN"
        assert (await gql.error(REVOKE, {"id": inv["id"]}, token=who.token))["code"] == "FORBIDDEN"
        assert (await gql.error(INVITES, {"p": pid}, token=who.token))["code"] == "FORBIDDEN"
    # No credentials at all.
    err = await gql.error(CREATE_INVITE, {"i": {"projectId": pid, "email": new_email(), "role": "VIEWER"}})
    assert err["code"] == "UNAUTHENTICATED"
    assert (await gql.error(REVOKE, {"id": inv["id"]}))["code"] == "UNAUTHENTICATED"
    # The admin can revoke what it created; the owner can list it.
    assert (await gql.ok(REVOKE, {"id": inv["id"]}, token=admin.token))["revokeInvite"]["status"] == "REVOKED"
    listed = (await gql.ok(INVITES, {"p": pid}, token=owner.token))["invites"]["edges"]
    assert [e["node"]["id"] for e in listed] == [inv["id"]]


async def test_another_projects_invitations_are_not_found(gql: GQL, services: Services) -> None:
    a_owner = await sign_up(gql)
    a = await new_project(gql, a_owner, "Project A")
    b_owner = await sign_up(gql)
    await new_project(gql, b_owner, "Project B")
    inv = await invite(gql, a_owner, a, new_email("a-invitee"))

    err = await gql.error(
        CREATE_INVITE, {"i": {"projectId": a, "email": new_email(), "role": "VIEWER"}}, token=b_owner.token
    )
    assert err["code"] == "NOT_FOUND"
    for q in (RESEND, REVOKE):
        assert (await gql.error(q, {"id": inv["id"]}, token=b_owner.token))["code"] == "NOT_FOUND"
    assert (await gql.error(INVITES, {"p": a}, token=b_owner.token))["code"] == "NOT_FOUND"

    # API keys never manage people: their own project's invitations are FORBIDDEN, another's NOT_FOUND.
    key_a = await _api_key(gql, a_owner, a)
    b2 = await new_project(gql, b_owner, "Project B2")
    key_b = await _api_key(gql, b_owner, b2)
    err = await gql.error(CREATE_INVITE, {"i": {"projectId": a, "email": new_email(), "role": "VIEWER"}}, token=key_a)
    assert err["code"] == "FORBIDDEN"
    assert (await gql.error(REVOKE, {"id": inv["id"]}, token=key_b))["code"] == "NOT_FOUND"
    assert (await gql.error(RESEND, {"id": inv["id"]}, token=key_b))["code"] == "NOT_FOUND"
    assert (await gql.error(INVITES, {"p": a}, token=key_b))["code"] == "NOT_FOUND"
    # An API key is not a user: it cannot accept invitations.
    token = await outbox_token(services.settings, inv["email"])
    assert (await gql.error(ACCEPT, {"t": token}, token=key_a))["code"] == "UNAUTHENTICATED"

    # Nothing changed in project A.
    listed = (await gql.ok(INVITES, {"p": a}, token=a_owner.token))["invites"]["edges"]
    assert [e["node"]["status"] for e in listed] == ["PENDING"]


async def _api_key(gql: GQL, owner: SignedIn, project_id: str) -> str:
    data = await gql.ok(
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
        {"i": {"projectId": project_id, "name": "ci", "scopes": ["project:read"]}},
        token=owner.token,
    )
    secret: str = data["createApiKey"]["secret"]
    return secret


async def test_the_outbox_and_invites_are_walled_by_row_level_security(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    await invite(gql, owner, pid, new_email("rls"))
    # The app role sees nothing of them outside the project's transaction.
    async with services.db.transaction(project_id=uuid.uuid4()) as s:
        assert (await s.execute(text("SELECT count(*) FROM invites"))).scalar() == 0
        assert (await s.execute(text("SELECT count(*) FROM mail_outbox"))).scalar() == 0


async def test_invites_list_pages_newest_first(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    made = [await invite(gql, owner, pid, new_email(f"p{i}")) for i in range(3)]
    page1 = (await gql.ok(INVITES, {"p": pid, "first": 2}, token=owner.token))["invites"]
    assert [e["node"]["id"] for e in page1["edges"]] == [made[2]["id"], made[1]["id"]]
    assert page1["pageInfo"]["hasNextPage"] is True
    page2 = (await gql.ok(INVITES, {"p": pid, "first": 2, "after": page1["pageInfo"]["endCursor"]}, token=owner.token))[
        "invites"
    ]
    assert [e["node"]["id"] for e in page2["edges"]] == [made[0]["id"]]
    assert page2["pageInfo"]["hasNextPage"] is False


def test_smtp_url_forms_and_redaction() -> None:
    c = SmtpConfig.parse("smtp://127.0.0.1:2525")
    assert (c.host, c.port, c.implicit_tls, c.starttls, c.username) == ("127.0.0.1", 2525, False, "auto", None)
    c = SmtpConfig.parse("smtps://user%40x.com:p%3Ass@mail.example.com")
    assert (c.port, c.implicit_tls, c.username, c.password) == (465, True, "user@x.com", "p:ss")
    assert SmtpConfig.parse("smtp://mx.example.com?starttls=require").starttls == "require"
    assert SmtpConfig.parse("smtp://mx.example.com").port == 25
    with pytest.raises(ValueError, match="starttls"):
        SmtpConfig.parse("smtp://mx.example.com?starttls=maybe")
    assert redact("go to https://x/invite?token=abc-_9 now") == "go to https://x/invite?token=[redacted] now"
    assert Settings.from_env({"INVITE_TTL": "3d", "INVITE_RESEND_COOLDOWN": "0"}).invite_ttl == 3 * 86400


async def test_a_suspended_projects_invitation_cannot_be_accepted(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    addr = new_email("suspended")
    await invite(gql, owner, pid, addr)
    token = await outbox_token(services.settings, addr)
    invitee = await sign_up(gql, addr)
    conn = await owner_conn(services.settings)
    try:
        await conn.execute(
            "UPDATE projects SET status = 'SUSPENDED', suspended_at = now() WHERE name = 'Acme Billing'"
            " AND id IN (SELECT project_id FROM invites WHERE email = $1)",
            addr,
        )
    finally:
        await conn.close()
    # Suspended behind this instance's back (as another instance would): forget the access it
    # remembered, which otherwise takes up to ACCESS_CACHE_TTL_MS to lapse (test_access_cache.py).
    services.access_cache.clear()
    assert (await gql.error(ACCEPT, {"t": token}, token=invitee.token))["code"] == "PROJECT_SUSPENDED"
    err = await gql.error(
        CREATE_INVITE, {"i": {"projectId": pid, "email": new_email(), "role": "VIEWER"}}, token=owner.token
    )
    assert err["code"] == "PROJECT_SUSPENDED"


ROLE = "mutation($i: UpdateMemberRoleInput!) { updateMemberRole(input: $i) { role } }"
REMOVE = "mutation($i: RemoveMemberInput!) { removeMember(input: $i) }"
TRANSFER = "mutation($i: TransferOwnershipInput!) { transferOwnership(input: $i) { id } }"


async def test_invitations_die_when_their_inviter_loses_the_right_to_invite(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid = await new_project(gql, owner)
    demoted, removed, leaving, heir = [await add_member(gql, owner, pid, "ADMIN") for _ in range(4)]
    by = {}
    for who, name in ((owner, "owner"), (demoted, "demoted"), (removed, "removed"), (leaving, "leaving")):
        addr = new_email(f"by-{name}")
        by[name] = (await invite(gql, who, pid, addr), await outbox_token(services.settings, addr))

    async def status(name: str) -> str:
        listed = (await gql.ok(INVITES, {"p": pid, "first": 50}, token=owner.token))["invites"]["edges"]
        return str({e["node"]["id"]: e["node"]["status"] for e in listed}[by[name][0]["id"]])

    # Role lowered below ADMIN: that admin's open invitation is revoked with the change.
    await gql.ok(ROLE, {"i": {"projectId": pid, "userId": demoted.user_id, "role": "MEMBER"}}, token=owner.token)
    assert await status("demoted") == "REVOKED"
    assert (await gql.error(PEEK, {"t": by["demoted"][1]}))["code"] == "NOT_FOUND"
    # Removed, and left by themselves: the same.
    await gql.ok(REMOVE, {"i": {"projectId": pid, "userId": removed.user_id}}, token=owner.token)
    assert await status("removed") == "REVOKED"
    await gql.ok(REMOVE, {"i": {"projectId": pid, "userId": leaving.user_id}}, token=leaving.token)
    assert await status("leaving") == "REVOKED"
    invitee = await sign_up_verified(gql, by["leaving"][0]["email"])
    assert (await gql.error(ACCEPT, {"t": by["leaving"][1]}, token=invitee.token))["code"] == "NOT_FOUND"
    assert await status("owner") == "PENDING"  # nobody else's invitation was touched

    # Ownership transferred away: the old owner stays ADMIN, who may invite, so theirs stands...
    await gql.ok(TRANSFER, {"i": {"projectId": pid, "userId": heir.user_id}}, token=owner.token)
    assert await status("owner") == "PENDING"
    # ...until the new owner lowers them.
    await gql.ok(ROLE, {"i": {"projectId": pid, "userId": owner.user_id, "role": "VIEWER"}}, token=heir.token)
    listed = (await gql.ok(INVITES, {"p": pid, "first": 50}, token=heir.token))["invites"]["edges"]
    assert {e["node"]["id"]: e["node"]["status"] for e in listed}[by["owner"][0]["id"]] == "REVOKED"

    # Each revocation is audited with its reason, in the change's transaction.
    conn = await owner_conn(services.settings)
    try:
        rows = await conn.fetch(
            "SELECT target_id, after->>'reason' AS reason FROM audit_log WHERE action = 'invite.revoke'"
            " AND project_id = (SELECT project_id FROM invites WHERE email = $1)",
            by["owner"][0]["email"],
        )
    finally:
        await conn.close()
    assert {r["target_id"] for r in rows} == {by[n][0]["id"] for n in ("demoted", "removed", "leaving", "owner")}
    assert {r["reason"] for r in rows} == {"inviter_lost_access"}
