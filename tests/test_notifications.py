"""Notifications end to end: a real SMTP server (aiosmtpd) receives every kind as multipart/alternative
(plain text and HTML); an occurrence is mailed once however often its cause is replayed; opt-outs;
who gets what (the billing email, else the owner and admins); the real causes: a wallet crossing
its threshold, a failed Stripe payment, the grace period ending and the fall back to the free plan
(fake Stripe server), a webhook endpoint disabled by the delivery worker; and migration 0010 on a
database that already holds mail."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import asyncpg
import httpx
import pytest

from ledgerx import ids
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import downgrade, upgrade
from ledgerx.domain.actor import Actor
from ledgerx.domain.notifications import kinds
from ledgerx.domain.notifications.kinds import Kind
from ledgerx.domain.notifications.notify import notify
from ledgerx.domain.payments import dunning, inbox, notices
from ledgerx.domain.payments.handlers import dispatch
from ledgerx.domain.webhooks import endpoints, outbox
from ledgerx.domain.webhooks.delivery import DeliveryPolicy, DeliveryWorker
from ledgerx.schema.notifications import NotificationKind
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, free_port, new_email, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_plan, deliver, stripe_settings
from tests.tenancy_helpers import add_member, create_project, make_platform_admin, owner_sql
from tests.test_invites import SmtpServer, fast_mail

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

UTC = dt.UTC
PUBLIC_URL = "https://app.ledgerx.test"  # fast_mail's LEDGERX_PUBLIC_URL

UPDATE_DETAILS = "mutation($i: UpdateBillingDetailsInput!) { updateBillingDetails(input: $i) { email } }"
UPDATE_SETTINGS = """
mutation($i: UpdateNotificationSettingsInput!) { updateNotificationSettings(input: $i) { disabled enabled } }
"""
READ_SETTINGS = "query($p: ID!) { project(id: $p) { notificationSettings { disabled enabled updatedAt } } }"
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
CREDIT = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }"
DEBIT = "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id } }"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe, smtp: SmtpServer) -> Settings:
    return fast_mail(stripe_settings(settings, fake), smtp.url)


# -- helpers ------------------------------------------------------------------------------------------


async def send_mail(services: Services) -> None:
    """Run the outbox sender (the app's own, pointed at the aiosmtpd server) until nothing is due."""
    sender = services.mail_sender
    assert sender is not None
    while await sender.run_once():
        pass


def mailed(smtp: SmtpServer, addr: str) -> list[EmailMessage]:
    """The notifications `addr` received (sign-up verification mails are plain text: left out)."""
    return [m for m in smtp.inbox.to(addr) if m.get_content_type() == "multipart/alternative"]


def parts(msg: EmailMessage) -> tuple[str, str]:
    """(plain text, HTML) of a multipart/alternative mail (asserts that shape)."""
    assert msg.get_content_type() == "multipart/alternative", msg.get_content_type()
    found = [p.get_content_type() for p in msg.iter_parts()]
    assert found == ["text/plain", "text/html"], found
    text, page = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and page is not None
    return str(text.get_content()), str(page.get_content())


async def outbox_rows(settings: Settings, project_id: str, kind: Kind) -> list[asyncpg.Record]:
    return await owner_sql(
        settings,
        "SELECT to_addr, occurrence_key, subject FROM mail_outbox WHERE project_id = $1 AND kind = $2 ORDER BY id",
        ids.decode("project", project_id),
        kind.slug,
    )


def sample_facts(kind: Kind) -> dict[str, str]:
    """Every fact the kind declares, as text with HTML's special characters in it."""
    return {name: f"<{name} & co>" for name in kind.spec.facts}


async def notify_now(services: Services, project_id: str, kind: Kind, key: str, facts: dict[str, str]) -> int:
    puuid = ids.decode("project", project_id)
    async with services.db.transaction(project_id=puuid) as s:
        return await notify(s, puuid, kind, key, facts)


@dataclasses.dataclass
class Team:
    owner: SignedIn
    admin: SignedIn
    member: SignedIn
    viewer: SignedIn
    project_id: str


async def make_team(gql: GQL, name: str = "Acme") -> Team:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner, name=name)
    admin = await add_member(gql, owner, pid, "ADMIN")
    member = await add_member(gql, owner, pid, "MEMBER")
    viewer = await add_member(gql, owner, pid, "VIEWER")
    return Team(owner, admin, member, viewer, pid)


async def wallet(gql: GQL, owner: SignedIn, project_id: str, *, threshold: int, name: str = "main") -> str:
    i = {"projectId": project_id, "name": name, "lowBalanceThreshold": str(threshold)}
    return str((await gql.ok(CREATE_WALLET, {"i": i}, token=owner.token))["createWallet"]["id"])


async def move(gql: GQL, owner: SignedIn, doc: str, wallet_id: str, amount: int, key: str | None = None) -> None:
    i = {"walletId": wallet_id, "amount": str(amount), "idempotencyKey": key or secrets.token_hex(6)}
    await gql.ok(doc, {"i": i}, token=owner.token)


# -- every kind, its parts, once per occurrence ----------------------------------------------------------


async def test_every_kind_arrives_as_text_and_html_once_per_occurrence(
    gql: GQL, services: Services, settings: Settings, smtp: SmtpServer
) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner, name="Acme <Ops> & Co")
    billing = new_email("billing")
    await gql.ok(UPDATE_DETAILS, {"i": {"projectId": pid, "email": billing}}, token=owner.token)

    for kind in Kind:
        facts = sample_facts(kind)
        assert await notify_now(services, pid, kind, "occ-1", facts) == 1, kind
        # The same occurrence again (a replayed cause): nothing more is queued.
        assert await notify_now(services, pid, kind, "occ-1", facts) == 0, kind
    await send_mail(services)

    to_billing = {k for k in Kind if k.spec.audience is kinds.Audience.BILLING}
    assert len(mailed(smtp, billing)) == len(to_billing)
    assert len(mailed(smtp, owner.email)) == 1  # the endpoint notice goes to the owner and admins
    received = mailed(smtp, billing) + mailed(smtp, owner.email)
    by_subject = {m["Subject"]: m for m in received}
    assert len(by_subject) == len(Kind)
    for kind in Kind:
        rows = await outbox_rows(settings, pid, kind)
        assert [r["occurrence_key"] for r in rows] == [f"{kind.slug}:occ-1"], kind
        msg = by_subject[rows[0]["subject"]]
        assert msg["Subject"].startswith("Acme <Ops> & Co: "), msg["Subject"]
        text, page = parts(msg)
        for name in kind.spec.facts:
            # Plain text carries the fact as it is; HTML carries it escaped, never as markup.
            assert f"<{name} & co>" in text, (kind, name)
            assert f"&lt;{name} &amp; co&gt;" in page, (kind, name)
            assert f"<{name} " not in page, (kind, name)
        assert "Acme <Ops> & Co" in text and "Acme &lt;Ops&gt; &amp; Co" in page
        assert pid in text
        assert "$" not in text and "$" not in page  # no placeholder left unfilled
        assert page.lstrip().startswith("<!DOCTYPE html>")


def test_the_graphql_enum_names_every_kind() -> None:
    assert [k.value for k in NotificationKind] == [k.value for k in Kind]
    assert all(NotificationKind.of(k).domain() is k for k in Kind)


async def test_a_kind_needs_its_facts(services: Services, gql: GQL) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    facts = sample_facts(Kind.LOW_BALANCE)
    del facts["threshold"]
    with pytest.raises(ValueError, match="threshold"):
        await notify_now(services, pid, Kind.LOW_BALANCE, "k", facts)


# -- who gets what -----------------------------------------------------------------------------------------


async def test_mail_goes_to_the_billing_email_else_the_owner_and_admins(
    gql: GQL, services: Services, settings: Settings, smtp: SmtpServer
) -> None:
    team = await make_team(gql)
    pid = team.project_id
    facts = sample_facts(Kind.LOW_BALANCE)

    # No billing details: the owner and the admin, not the member or the viewer.
    assert await notify_now(services, pid, Kind.LOW_BALANCE, "a", facts) == 2
    rows = await outbox_rows(settings, pid, Kind.LOW_BALANCE)
    assert sorted(r["to_addr"] for r in rows) == sorted([team.owner.email.lower(), team.admin.email.lower()])

    # A billing email takes over billing mail, in any case it was typed in.
    billing = new_email("Billing").upper()
    await gql.ok(UPDATE_DETAILS, {"i": {"projectId": pid, "email": billing}}, token=team.admin.token)
    assert await notify_now(services, pid, Kind.LOW_BALANCE, "b", facts) == 1
    rows = await outbox_rows(settings, pid, Kind.LOW_BALANCE)
    assert [r["to_addr"] for r in rows if r["occurrence_key"].endswith(":b")] == [billing.lower()]
    # ... but not notices about the project's own setup: those stay with the owner and admins.
    hook = sample_facts(Kind.WEBHOOK_ENDPOINT_DISABLED)
    assert await notify_now(services, pid, Kind.WEBHOOK_ENDPOINT_DISABLED, "c", hook) == 2

    # Cleared again: back to the owner and admins.
    await gql.ok(UPDATE_DETAILS, {"i": {"projectId": pid, "email": None}}, token=team.owner.token)
    assert await notify_now(services, pid, Kind.LOW_BALANCE, "d", facts) == 2

    await send_mail(services)
    assert len(mailed(smtp, billing)) == 1
    assert len(mailed(smtp, team.owner.email)) == 3  # a, c, d
    assert len(mailed(smtp, team.admin.email)) == 3
    assert mailed(smtp, team.member.email) == [] and mailed(smtp, team.viewer.email) == []


async def test_one_project_never_mails_another_projects_people(
    gql: GQL, services: Services, settings: Settings
) -> None:
    a, b = await make_team(gql, "A"), await make_team(gql, "B")
    await notify_now(services, a.project_id, Kind.LOW_BALANCE, "x", sample_facts(Kind.LOW_BALANCE))
    rows = await outbox_rows(settings, a.project_id, Kind.LOW_BALANCE)
    assert {r["to_addr"] for r in rows} == {a.owner.email.lower(), a.admin.email.lower()}
    # Inside project A's transaction, project B does not exist (row-level security): nothing is queued.
    auuid, buuid = ids.decode("project", a.project_id), ids.decode("project", b.project_id)
    async with services.db.transaction(project_id=auuid) as s:
        assert await notify(s, buuid, Kind.LOW_BALANCE, "x", sample_facts(Kind.LOW_BALANCE)) == 0
    assert await outbox_rows(settings, b.project_id, Kind.LOW_BALANCE) == []


# -- opt-out ------------------------------------------------------------------------------------------------


async def test_a_kind_turned_off_is_not_mailed(
    gql: GQL, services: Services, settings: Settings, smtp: SmtpServer
) -> None:
    team = await make_team(gql)
    pid = team.project_id
    state = (await gql.ok(READ_SETTINGS, {"p": pid}, token=team.viewer.token))["project"]["notificationSettings"]
    assert state == {"disabled": [], "enabled": [k.value for k in Kind], "updatedAt": None}

    off = {"projectId": pid, "disabled": ["LOW_BALANCE", "GRACE_ENDING", "LOW_BALANCE"]}
    data = await gql.ok(UPDATE_SETTINGS, {"i": off}, token=team.admin.token)
    assert data["updateNotificationSettings"]["disabled"] == ["GRACE_ENDING", "LOW_BALANCE"]
    assert "LOW_BALANCE" not in data["updateNotificationSettings"]["enabled"]
    state = (await gql.ok(READ_SETTINGS, {"p": pid}, token=team.member.token))["project"]["notificationSettings"]
    assert state["disabled"] == ["GRACE_ENDING", "LOW_BALANCE"] and state["updatedAt"]

    # A real crossing while LOW_BALANCE is off: no mail; another kind still goes out.
    w = await wallet(gql, team.owner, pid, threshold=100)
    await move(gql, team.owner, CREDIT, w, 500)
    await move(gql, team.owner, DEBIT, w, 450)
    assert await outbox_rows(settings, pid, Kind.LOW_BALANCE) == []
    assert await notify_now(services, pid, Kind.PAYMENT_FAILED, "p", sample_facts(Kind.PAYMENT_FAILED)) == 2

    # On again: the next crossing is mailed.
    await gql.ok(UPDATE_SETTINGS, {"i": {"projectId": pid, "disabled": []}}, token=team.owner.token)
    await move(gql, team.owner, CREDIT, w, 200)
    await move(gql, team.owner, DEBIT, w, 200)
    assert len(await outbox_rows(settings, pid, Kind.LOW_BALANCE)) == 2
    await send_mail(services)
    assert len(mailed(smtp, team.admin.email)) == 2

    audit = await owner_sql(
        settings,
        "SELECT before, after FROM audit_log WHERE project_id = $1 AND action = 'notification_settings.update'"
        " ORDER BY id",
        ids.decode("project", pid),
    )
    assert [(a["before"], a["after"]) for a in audit] == [
        ('{"disabled": []}', '{"disabled": ["GRACE_ENDING", "LOW_BALANCE"]}'),
        ('{"disabled": ["GRACE_ENDING", "LOW_BALANCE"]}', '{"disabled": []}'),
    ]


async def test_only_admins_change_notification_settings(gql: GQL, services: Services) -> None:
    team = await make_team(gql)
    other = await make_team(gql, "Other")
    i = {"projectId": team.project_id, "disabled": ["LOW_BALANCE"]}
    for who in (team.member, team.viewer):
        assert (await gql.error(UPDATE_SETTINGS, {"i": i}, token=who.token))["code"] == "FORBIDDEN"
    # Another project's admin: the project does not exist for them.
    assert (await gql.error(UPDATE_SETTINGS, {"i": i}, token=other.admin.token))["code"] == "NOT_FOUND"
    assert (await gql.error(READ_SETTINGS, {"p": team.project_id}, token=other.owner.token))["code"] == "NOT_FOUND"
    assert (await gql.error(UPDATE_SETTINGS, {"i": {**i, "disabled": ["NOPE"]}}, token=team.owner.token))[
        "code"
    ] == "BAD_USER_INPUT"
    state = (await gql.ok(READ_SETTINGS, {"p": team.project_id}, token=team.owner.token))["project"]
    assert state["notificationSettings"]["disabled"] == []


# -- low balance: once per crossing, in the ledger's transaction ---------------------------------------------


async def test_low_balance_is_mailed_once_per_crossing(
    gql: GQL, services: Services, settings: Settings, smtp: SmtpServer
) -> None:
    team = await make_team(gql)
    pid = team.project_id
    billing = new_email("billing")
    await gql.ok(UPDATE_DETAILS, {"i": {"projectId": pid, "email": billing}}, token=team.owner.token)
    w = await wallet(gql, team.owner, pid, threshold=100, name="Ops <main>")

    await move(gql, team.owner, CREDIT, w, 500)
    assert await outbox_rows(settings, pid, Kind.LOW_BALANCE) == []
    await move(gql, team.owner, DEBIT, w, 450, key="cross-1")  # 500 -> 50: crosses
    await move(gql, team.owner, DEBIT, w, 450, key="cross-1")  # the same request replayed
    await move(gql, team.owner, DEBIT, w, 10)  # 50 -> 40: still below, no new crossing
    assert len(await outbox_rows(settings, pid, Kind.LOW_BALANCE)) == 1
    # A refused debit (insufficient funds) writes nothing, mail included.
    refused = await gql.error(
        DEBIT, {"i": {"walletId": w, "amount": "1000", "idempotencyKey": "nope"}}, token=team.owner.token
    )
    assert refused["code"] == "INSUFFICIENT_FUNDS"
    await move(gql, team.owner, CREDIT, w, 60)  # 40 -> 100: at the threshold again
    await move(gql, team.owner, DEBIT, w, 1)  # 100 -> 99: a second crossing
    rows = await outbox_rows(settings, pid, Kind.LOW_BALANCE)
    assert len(rows) == 2 and {r["to_addr"] for r in rows} == {billing}

    await send_mail(services)
    received = [parts(m) for m in mailed(smtp, billing)]
    assert len(received) == 2
    for text, page in received:
        assert "Ops <main>" in text and "Ops &lt;main&gt;" in page
        assert w in text and "Threshold: 100 credits" in text
    # The outbox sends in no particular order: one mail per crossing, each with its balance.
    assert sorted("Balance:   50 credits" in t for t, _ in received) == [False, True]
    assert sorted("Balance:   99 credits" in t for t, _ in received) == [False, True]


# -- dunning: payment failed, grace ending, downgraded ----------------------------------------------------------


@dataclasses.dataclass
class Billing:
    owner: SignedIn
    project_id: str
    free: str
    pro: str


@pytest.fixture
async def billing_world(gql: GQL, settings: Settings, services: Services) -> AsyncIterator[Billing]:
    admin = await make_platform_admin(gql, settings)
    # The catalog is global and the session's database is shared: one free plan at a time.
    await owner_sql(settings, "UPDATE plans SET archived_at = now() WHERE tier = 'FREE' AND archived_at IS NULL")
    free = await create_plan(gql, admin, name="Free", tier="FREE", amount=0)
    pro = await create_plan(gql, admin, name="Pro", amount=2000, included=1000)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner, name="Dunning & Sons")
    try:
        yield Billing(owner, pid, free, pro)
    finally:
        await owner_sql(settings, "UPDATE plans SET archived_at = now() WHERE archived_at IS NULL")


async def stripe_send(client: httpx.AsyncClient, services: Services, events: list[dict[str, Any]]) -> None:
    for ev in events:
        r = await deliver(client, ev)
        assert r.status_code == 200, r.text
    await inbox.drain(services.payments)


async def test_dunning_mails_payment_failed_grace_ending_and_downgraded_once_each(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    smtp: SmtpServer,
    billing_world: Billing,
) -> None:
    w = billing_world
    now = {"t": dt.datetime(2026, 1, 1, tzinfo=UTC)}

    def at(t: dt.datetime) -> None:
        now["t"] = t
        fake.now = int(t.timestamp())

    services.payments.clock = lambda: now["t"]
    at(now["t"])
    session_id = await checkout(gql, w.owner, w.project_id, planId=w.pro)
    await stripe_send(client, services, fake.complete_checkout(session_id))
    sub_id = fake.get(session_id)["subscription"]

    feb1 = dt.datetime(2026, 2, 1, tzinfo=UTC)
    at(feb1)
    failed = fake.renew(sub_id, pay=False)
    invoice_id = failed[0]["data"]["object"]["id"]
    await stripe_send(client, services, failed)
    [row] = await outbox_rows(settings, w.project_id, Kind.PAYMENT_FAILED)
    assert row["to_addr"] == w.owner.email.lower()

    # The same Stripe event applied again (a replay): no second mail.
    failure = next(e for e in fake.events if e["type"] == "invoice.payment_failed")
    await dispatch.handle(services.payments, failure)
    assert len(await outbox_rows(settings, w.project_id, Kind.PAYMENT_FAILED)) == 1

    # Stripe's next attempt fails too: a new occurrence, a new mail.
    at(feb1 + dt.timedelta(days=3))
    await stripe_send(client, services, fake.fail_invoice(invoice_id))
    assert len(await outbox_rows(settings, w.project_id, Kind.PAYMENT_FAILED)) == 2

    grace_end = feb1 + dt.timedelta(seconds=settings.subscription_grace_period)
    at(grace_end - dt.timedelta(days=2))
    assert await notices.warn_grace_ending(services.payments) == 0  # not within a day yet
    at(grace_end - dt.timedelta(hours=12))
    assert await notices.warn_grace_ending(services.payments) == 1
    assert await notices.warn_grace_ending(services.payments) == 0  # warned once, whatever runs it
    at(grace_end - dt.timedelta(hours=1))
    assert await notices.warn_grace_ending(services.payments) == 0

    at(grace_end + dt.timedelta(seconds=1))
    assert await dunning.run_dunning(services.payments) == 1
    assert await dunning.run_dunning(services.payments) == 0
    assert len(await outbox_rows(settings, w.project_id, Kind.DOWNGRADED)) == 1

    await send_mail(services)
    everything = mailed(smtp, w.owner.email)
    # The first period's invoice was issued when it was paid: its mail carries the PDF link instead.
    issued = [
        m for m in everything if re.fullmatch(r"Dunning & Sons: invoice LX-\d{4}-\d{6} for USD 20\.00", m["Subject"])
    ]
    assert len(issued) == 1
    assert "/invoices/ivc_" in parts(issued[0])[0]
    received = [m for m in everything if m not in issued]
    assert sorted(m["Subject"] for m in received) == [
        "Dunning & Sons: a payment of USD 20.00 failed",
        "Dunning & Sons: a payment of USD 20.00 failed",
        "Dunning & Sons: moved to the Free plan",
        "Dunning & Sons: the Pro plan ends on 2026-02-08 00:00 UTC",
    ]
    portal = f"{PUBLIC_URL}/billing?project={w.project_id}"
    for msg in received:
        text, page = parts(msg)
        assert portal in text and f'href="{portal}"' in page, msg["Subject"]
    failed_text = parts(next(m for m in received if "failed" in m["Subject"]))[0]
    assert "2026-02-08 00:00 UTC" in failed_text  # the grace end
    assert "attempt 1" in failed_text or "attempt 2" in failed_text


# -- webhook endpoint disabled ----------------------------------------------------------------------------------


async def test_a_disabled_endpoint_is_mailed_to_the_owner_and_admins_once(
    gql: GQL, services: Services, settings: Settings, smtp: SmtpServer
) -> None:
    team = await make_team(gql)
    pid = team.project_id
    puuid = ids.decode("project", pid)
    # The billing contact is not told about the project's integration.
    billing = new_email("billing")
    await gql.ok(UPDATE_DETAILS, {"i": {"projectId": pid, "email": billing}}, token=team.owner.token)
    # The worker serves every project of the session's database: others' pending deliveries stay out.
    await owner_sql(settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")
    dead = await endpoints.create(
        services.db,
        Actor.system("test"),
        puuid,
        url=f"http://127.0.0.1:{free_port()}/hook",
        events=["*"],
        allow_private=True,
    )
    # Failing for an hour already (faster than waiting for the configured time).
    await owner_sql(
        settings,
        "UPDATE webhook_endpoints SET failing_since = now() - interval '1 hour' WHERE id = $1",
        dead.endpoint.id,
    )
    async with services.db.transaction(project_id=puuid) as s:
        await outbox.emit(s, puuid, "webhook.test", {"endpointId": ids.encode("webhook_endpoint", dead.endpoint.id)})
    policy = DeliveryPolicy(
        allow_private=True, timeout=2.0, retry_delays=(0.1,), disable_after=60.0, poll_interval=0.05
    )
    await DeliveryWorker(services.db, policy).run_once()
    assert not (await endpoints.get(services.db, puuid, dead.endpoint.id)).enabled

    rows = await outbox_rows(settings, pid, Kind.WEBHOOK_ENDPOINT_DISABLED)
    assert sorted(r["to_addr"] for r in rows) == sorted([team.owner.email.lower(), team.admin.email.lower()])
    await send_mail(services)
    [msg] = mailed(smtp, team.admin.email)
    text, page = parts(msg)
    assert ids.encode("webhook_endpoint", dead.endpoint.id) in text
    assert "/hook" in text and "every attempt failed for 1m" in text and "<code>" in page
    assert mailed(smtp, billing) == [] and mailed(smtp, team.member.email) == []


# -- migration 0010 on a database that already holds mail ------------------------------------------------------


async def test_migration_0010_keeps_the_outbox_and_makes_occurrences_unique(scratch_database: str) -> None:
    await asyncio.to_thread(upgrade, scratch_database, "0009_ledger_stream_position")
    project, mail = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(asyncpg_dsn(scratch_database))
    try:
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'p')", project)
        await conn.execute(
            "INSERT INTO mail_outbox (id, project_id, to_addr, subject, body_text, kind)"
            " VALUES ($1, $2, 'a@example.com', 's', 'old body', 'invite')",
            mail,
            project,
        )
    finally:
        await conn.close()

    await asyncio.to_thread(upgrade, scratch_database, "0010_notifications")
    conn = await asyncpg.connect(asyncpg_dsn(scratch_database))
    try:
        row = await conn.fetchrow(
            "SELECT body_text, body_html, occurrence_key, kind FROM mail_outbox WHERE id = $1", mail
        )
        assert dict(row) == {"body_text": "old body", "body_html": None, "occurrence_key": None, "kind": "invite"}
        insert = (
            "INSERT INTO mail_outbox (id, project_id, to_addr, subject, body_text, kind, occurrence_key)"
            " VALUES ($1, $2, $3, 's', 'b', 'low_balance', $4)"
        )
        # Mails without an occurrence never collide; one occurrence is one mail per recipient.
        await conn.execute(insert, uuid.uuid4(), project, "a@example.com", None)
        await conn.execute(insert, uuid.uuid4(), project, "a@example.com", "low_balance:1")
        await conn.execute(insert, uuid.uuid4(), project, "b@example.com", "low_balance:1")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, uuid.uuid4(), project, "A@Example.com", "low_balance:1")
        await conn.execute("INSERT INTO billing_details (project_id, email) VALUES ($1, 'x@example.com')", project)
        assert await conn.fetchval("SELECT relrowsecurity FROM pg_class WHERE relname = 'billing_details'")
        assert await conn.fetchval("SELECT relforcerowsecurity FROM pg_class WHERE relname = 'notification_settings'")
    finally:
        await conn.close()

    await asyncio.to_thread(downgrade, scratch_database, "0009_ledger_stream_position")
    conn = await asyncpg.connect(asyncpg_dsn(scratch_database))
    try:
        assert await conn.fetchval("SELECT body_text FROM mail_outbox WHERE id = $1", mail) == "old body"
        assert await conn.fetchval("SELECT to_regclass('billing_details')") is None
    finally:
        await conn.close()
