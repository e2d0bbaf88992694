"""Auto top-up end to end: setAutoTopUp (validation writes nothing), a debit crossing the threshold
wants one top-up in its ledger transaction, the worker round makes one off-session PaymentIntent
through the real stripe SDK against the fake Stripe server, and the signed Stripe route applies
its outcome: credited once (a PAID grant, a TOP_UP invoice, invoice/payment webhooks received and
verified at a local receiver) or failed (lastStatus, invoice.payment_failed, a mail through
aiosmtpd) with no retry storm."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.payments import inbox, top_up_intents
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_pack, deliver, deliver_and_process, stripe_settings
from tests.tenancy_helpers import add_member, create_project, make_platform_admin, owner_sql
from tests.test_invites import SmtpServer, fast_mail
from tests.test_webhook_events import CREATE_ENDPOINT, Hook, receiver
from tests.webhooks_out_receiver import Receiver

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
__all__ = ["receiver"]  # the fixture, used by the tests below

SET = """
mutation($i: SetAutoTopUpInput!) {
  setAutoTopUp(input: $i) { walletId enabled threshold creditPackId lastAttemptAt lastStatus lastError }
}
"""
WALLET = """
query($id: ID!) { wallet(id: $id) { balance autoTopUp { enabled threshold creditPackId lastAttemptAt lastStatus
  lastError } grants { edges { node { amount remaining category expiresAt } } } } }
"""
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
CREDIT = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }"
DEBIT = "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id balanceAfter } }"
ARCHIVE_PACK = "mutation($id: ID!) { archiveCreditPack(id: $id) { id archived } }"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
DECLINE = {"status": 402, "kind": "card_error", "code": "card_declined", "message": "Your card was declined."}
MONEY_EVENTS = ["invoice.created", "invoice.paid", "invoice.payment_failed", "payment.succeeded"]


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe, smtp: SmtpServer) -> Settings:
    return fast_mail(stripe_settings(settings, fake, db_pool_size=10), smtp.url)


@dataclasses.dataclass
class Shop:
    gql: GQL
    client: httpx.AsyncClient
    services: Services
    settings: Settings
    fake: FakeStripe
    admin: SignedIn
    owner: SignedIn
    project_id: str
    wallet_id: str
    pack_id: str

    async def send(self, *events: dict[str, Any]) -> None:
        await deliver_and_process(self.client, self.services, *events)

    async def save_card(self) -> None:
        """A credit-pack Checkout (setup_future_usage=off_session): its payment_intent.succeeded
        saves the card (the pack's 500 credits land too)."""
        sid = await checkout(self.gql, self.owner, self.project_id, creditPackId=self.pack_id, walletId=self.wallet_id)
        assert self.fake.get(sid)["_payment_intent_data"]["setup_future_usage"] == "off_session"
        await self.send(*self.fake.complete_checkout(sid))
        await self.send(self.fake.intent_succeeded(self.fake.get(sid)["payment_intent"]))

    async def set(self, **fields: Any) -> dict[str, Any]:
        i = {"walletId": self.wallet_id, "enabled": True, "threshold": "300", "creditPackId": self.pack_id, **fields}
        return (await self.gql.ok(SET, {"i": i}, token=self.owner.token))["setAutoTopUp"]

    async def debit(self, amount: int, key: str | None = None) -> dict[str, Any]:
        i = {"walletId": self.wallet_id, "amount": str(amount), "idempotencyKey": key or uuid.uuid4().hex}
        return await self.gql(DEBIT, {"i": i}, token=self.owner.token)

    async def credit(self, amount: int) -> None:
        i = {"walletId": self.wallet_id, "amount": str(amount), "idempotencyKey": uuid.uuid4().hex}
        await self.gql.ok(CREDIT, {"i": i}, token=self.owner.token)

    async def wallet(self) -> dict[str, Any]:
        return (await self.gql.ok(WALLET, {"id": self.wallet_id}, token=self.owner.token))["wallet"]

    async def sql(self, query: str, *args: object) -> list[Any]:
        return await owner_sql(self.settings, query, *args)

    async def attempts(self) -> list[Any]:
        return await self.sql(
            "SELECT * FROM auto_top_up_attempts WHERE wallet_id = $1 ORDER BY created_at, id",
            ids.decode("wallet", self.wallet_id),
        )

    def intents(self) -> list[Any]:
        return self.fake.calls_to("POST", "payment_intents")

    async def hook(self, receiver: Receiver) -> Hook:
        path = f"/ok/{uuid.uuid4().hex}"
        made = await self.gql.ok(
            CREATE_ENDPOINT,
            {"i": {"projectId": self.project_id, "url": receiver.url(path), "events": MONEY_EVENTS}},
            token=self.owner.token,
        )
        return Hook(self.services, receiver, self.project_id, made["createWebhookEndpoint"]["secret"], path)


@pytest.fixture
async def shop(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe
) -> AsyncIterator[Shop]:
    admin = await make_platform_admin(gql, settings)
    owner = await sign_up(gql)
    pack = await create_pack(gql, admin, credits=500, amount=900)
    pid = await create_project(gql, owner)
    made = await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "main"}}, token=owner.token)
    s = Shop(gql, client, services, settings, fake, admin, owner, pid, made["createWallet"]["id"], pack)
    yield s
    report = await verify_ledger(services.ledger, ids.decode("project", pid))
    assert report.ok, report.mismatches


async def test_crossing_charges_once_and_credits_once(shop: Shop, receiver: Receiver) -> None:
    s = shop
    await s.save_card()
    hook = await s.hook(receiver)
    saved = await s.set(threshold="300")
    assert saved["enabled"] is True and saved["threshold"] == "300" and saved["lastStatus"] is None
    assert (await s.debit(150))["data"]["debitWallet"]["balanceAfter"] == "350"
    assert await s.attempts() == []  # 350 is not below 300: nothing wanted
    assert (await s.debit(100))["data"]["debitWallet"]["balanceAfter"] == "250"
    [wanted] = await s.attempts()
    assert wanted["status"] == "WANTED" and wanted["trigger_transaction_id"] is not None
    assert s.intents() == []  # Stripe is never called in the ledger's transaction

    assert await top_up_intents.run_once(s.services.payments) == 1
    [call] = s.intents()
    assert call.idempotency_key == f"ledgerx:auto-top-up:{wanted['id']}"
    p = call.params
    assert p["amount"] == "900" and p["currency"] == "usd" and p["off_session"] == "true" and p["confirm"] == "true"
    customer = s.fake.of_type("customer")[0]["id"]
    saved_pm = (
        await s.sql("SELECT default_payment_method FROM payment_customers WHERE stripe_customer_id = $1", customer)
    )[0][0]
    assert p["customer"] == customer and p["payment_method"] == saved_pm and saved_pm.startswith("pm_")
    created = await hook.one("invoice.created")
    assert created["kind"] == "TOP_UP" and created["status"] == "OPEN"
    assert (await s.wallet())["autoTopUp"]["lastStatus"] == "PENDING"

    paid = s.fake.last_event("payment_intent.succeeded")
    await s.send(paid)
    await s.send(paid)  # a second delivery of the same event
    replay = s.fake.event("payment_intent.succeeded", paid["data"]["object"], record=False)
    await s.send(replay)  # the same intent in a new event: still credited once
    w = await s.wallet()
    assert w["balance"] == "750"
    assert w["autoTopUp"]["lastStatus"] == "SUCCEEDED" and w["autoTopUp"]["lastAttemptAt"] is not None
    # The checkout's pack (250 of it left) and the top-up's: both PAID, without expiry.
    assert sorted((g["node"]["amount"], g["node"]["remaining"]) for g in w["grants"]["edges"]) == [
        ("500", "250"),
        ("500", "500"),
    ]
    assert all(g["node"]["expiresAt"] is None for g in w["grants"]["edges"])
    assert all(g["node"]["category"] == "PAID" for g in w["grants"]["edges"])
    got = {e["type"]: e["data"] for e in await hook.next(2)}
    assert got["invoice.paid"]["status"] == "PAID" and got["invoice.paid"]["id"] == created["id"]
    assert got["payment.succeeded"]["credits"] == "500"
    await hook.nothing_more()
    [inv] = await s.sql(
        "SELECT kind, status, amount_paid, credits FROM invoices WHERE id = $1", ids.decode("invoice", created["id"])
    )
    assert (inv["kind"], inv["status"], inv["amount_paid"], inv["credits"]) == ("TOP_UP", "PAID", 900, 500)
    assert len(await s.sql("SELECT 1 FROM payments WHERE invoice_id = $1", ids.decode("invoice", created["id"]))) == 1

    # Back above the threshold: the next crossing tops up again (a new attempt, a new intent).
    assert (await s.debit(500))["data"]["debitWallet"]["balanceAfter"] == "250"
    await top_up_intents.run_once(s.services.payments)
    assert len(s.intents()) == 2
    assert [a["status"] for a in await s.attempts()] == ["SUCCEEDED", "PENDING"]


async def test_fifty_concurrent_crossing_debits_one_intent(shop: Shop) -> None:
    s = shop
    await s.save_card()
    await s.set(threshold="400")
    # 50 debits of 10 at once from 500: the balance passes 400 once, whatever the interleaving.
    results = await asyncio.gather(*(s.debit(10) for _ in range(50)))
    assert all(not r.get("errors") for r in results), [r for r in results if r.get("errors")]
    assert (await s.wallet())["balance"] == "0"
    # Saving the settings while low wants a top-up too, and four workers race to claim.
    await asyncio.gather(*(s.set(threshold="400") for _ in range(10)))
    claimed = await asyncio.gather(*(top_up_intents.run_once(s.services.payments) for _ in range(4)))
    assert sum(claimed) == 1
    assert len(s.intents()) == 1
    assert [a["status"] for a in await s.attempts()] == ["PENDING"]
    await s.send(s.fake.last_event("payment_intent.succeeded"))
    assert (await s.wallet())["balance"] == "500"


async def test_decline_reported_once_and_no_retry_storm(shop: Shop, receiver: Receiver, smtp: SmtpServer) -> None:
    s = shop
    await s.save_card()
    hook = await s.hook(receiver)
    await s.gql.ok(
        "mutation($i: UpdateBillingDetailsInput!) { updateBillingDetails(input: $i) { email } }",
        {"i": {"projectId": s.project_id, "email": "billing@shop.test"}},
        token=s.owner.token,
    )
    await s.set(threshold="300")
    s.fake.fail_next("POST", "payment_intents", **DECLINE)
    await s.debit(300)
    await top_up_intents.run_once(s.services.payments)
    assert len(s.intents()) == 1
    [attempt] = await s.attempts()
    assert attempt["status"] == "FAILED" and attempt["stripe_payment_intent_id"].startswith("pi_")
    top = (await s.wallet())["autoTopUp"]
    assert top["lastStatus"] == "FAILED" and "declined" in top["lastError"]
    # Stripe's own event about the decline arrives too: nothing is announced twice.
    failed_ev = s.fake.last_event("payment_intent.payment_failed")
    assert failed_ev["data"]["object"]["id"] == attempt["stripe_payment_intent_id"]
    await s.send(failed_ev, failed_ev)
    got = {e["type"]: e["data"] for e in await hook.next(2)}
    assert got["invoice.payment_failed"]["status"] == "VOID" and got["invoice.payment_failed"]["kind"] == "TOP_UP"
    await hook.nothing_more()
    sender = s.services.mail_sender
    assert sender is not None
    while await sender.run_once():
        pass
    mails = [m for m in smtp.inbox.to("billing@shop.test") if "failed" in str(m["Subject"])]
    assert len(mails) == 1
    rows = await s.sql(
        "SELECT occurrence_key FROM mail_outbox WHERE project_id = $1 AND kind = 'top_up_failed'",
        ids.decode("project", s.project_id),
    )
    assert [r["occurrence_key"] for r in rows] == [f"top_up_failed:{attempt['stripe_payment_intent_id']}"]

    # Further debits below the threshold cross nothing: no new attempt, no Stripe call.
    for _ in range(5):
        await s.debit(10)
    await top_up_intents.run_once(s.services.payments)
    assert len(s.intents()) == 1 and len(await s.attempts()) == 1
    # Credited back above the threshold by something else, the next crossing tries again.
    await s.credit(200)  # 150 -> 350
    await s.debit(60)  # 350 -> 290: a new crossing
    await top_up_intents.run_once(s.services.payments)
    assert len(s.intents()) == 2
    assert [a["status"] for a in await s.attempts()] == ["FAILED", "PENDING"]


async def test_saving_again_while_low_is_the_retry(shop: Shop) -> None:
    s = shop
    await s.save_card()
    await s.set(threshold="300")
    s.fake.fail_next("POST", "payment_intents", **DECLINE)
    await s.debit(300)
    await top_up_intents.run_once(s.services.payments)
    assert (await s.wallet())["autoTopUp"]["lastStatus"] == "FAILED"
    await s.set(threshold="300")
    await top_up_intents.run_once(s.services.payments)
    assert len(s.intents()) == 2
    await s.send(s.fake.last_event("payment_intent.succeeded"))
    w = await s.wallet()
    assert w["balance"] == "700" and w["autoTopUp"]["lastStatus"] == "SUCCEEDED"


async def test_no_saved_payment_method_no_stripe_call(shop: Shop) -> None:
    s = shop
    await s.credit(500)
    await s.set(threshold="300")
    await s.debit(300)
    await top_up_intents.run_once(s.services.payments)
    assert s.intents() == []
    top = (await s.wallet())["autoTopUp"]
    assert top["lastStatus"] == "NO_PAYMENT_METHOD" and top["lastAttemptAt"] is not None
    assert [a["status"] for a in await s.attempts()] == ["SKIPPED"]


async def test_disabled_does_nothing(shop: Shop) -> None:
    s = shop
    await s.save_card()
    saved = await s.set(threshold="300", enabled=False)
    assert saved["enabled"] is False
    await s.debit(400)
    await top_up_intents.run_once(s.services.payments)
    assert await s.attempts() == [] and s.intents() == []
    # Turned off after a crossing was recorded: the worker skips it without calling Stripe.
    await s.set(threshold="50")
    await s.debit(60)
    [wanted] = await s.attempts()
    assert wanted["status"] == "WANTED"
    await s.set(threshold="50", enabled=False)
    await top_up_intents.run_once(s.services.payments)
    assert [a["status"] for a in await s.attempts()] == ["SKIPPED"] and s.intents() == []


async def test_lost_claim_asks_stripe_again_with_the_same_key(shop: Shop) -> None:
    s = shop
    await s.save_card()
    await s.set(threshold="300")
    s.fake.fail_next("POST", "payment_intents", status=503, message="overloaded", retry=False)
    await s.debit(300)
    await top_up_intents.run_once(s.services.payments)
    [attempt] = await s.attempts()
    assert attempt["status"] == "PENDING" and attempt["stripe_payment_intent_id"] is None
    await top_up_intents.run_once(s.services.payments)  # too soon: not lost yet
    assert len(s.intents()) == 1
    await s.sql(
        "UPDATE auto_top_up_attempts SET started_at = started_at - interval '2 minutes' WHERE id = $1", attempt["id"]
    )
    await top_up_intents.run_once(s.services.payments)
    first, second = s.intents()
    assert first.idempotency_key == second.idempotency_key == f"ledgerx:auto-top-up:{attempt['id']}"
    [attempt] = await s.attempts()
    assert attempt["stripe_payment_intent_id"] is not None
    assert (
        len(
            await s.sql(
                "SELECT 1 FROM invoices WHERE project_id = $1 AND kind = 'TOP_UP'", ids.decode("project", s.project_id)
            )
        )
        == 1
    )


async def test_bad_input_is_refused_and_writes_nothing(shop: Shop) -> None:
    s = shop
    usd = (
        await s.gql.ok(
            CREATE_WALLET, {"i": {"projectId": s.project_id, "name": "usd", "currency": "USD"}}, token=s.owner.token
        )
    )["createWallet"]["id"]
    archived = await create_pack(s.gql, s.admin, credits=100, amount=300)
    await s.gql.ok(ARCHIVE_PACK, {"id": archived}, token=s.admin.token)
    missing = ids.encode("credit_pack", ids.uuid7())

    async def refused(**fields: Any) -> dict[str, Any]:
        i = {"walletId": s.wallet_id, "enabled": True, "threshold": "300", "creditPackId": s.pack_id, **fields}
        return await s.gql.error(SET, {"i": i}, token=s.owner.token)

    e = await refused(walletId=usd)
    assert (e["code"], e["field"], e["reason"]) == ("BAD_USER_INPUT", "creditPackId", "CURRENCY_MISMATCH")
    e = await refused(creditPackId=archived)
    assert (e["code"], e["field"], e["reason"]) == ("BAD_USER_INPUT", "creditPackId", "ARCHIVED")
    e = await refused(creditPackId=missing)
    assert (e["code"], e["field"]) == ("NOT_FOUND", "creditPackId")
    e = await refused(threshold="-1")
    assert (e["code"], e["field"]) == ("BAD_USER_INPUT", "threshold")
    e = await refused(walletId=ids.encode("wallet", ids.uuid7()))
    assert (e["code"], e["field"]) == ("NOT_FOUND", "walletId")
    # A member may not spend the project's money, nor may an API key (even with wallets:write).
    member = await add_member(s.gql, s.owner, s.project_id, "MEMBER")
    i = {"walletId": s.wallet_id, "enabled": True, "threshold": "300", "creditPackId": s.pack_id}
    assert (await s.gql.error(SET, {"i": i}, token=member.token))["code"] == "FORBIDDEN"
    key = (
        await s.gql.ok(
            CREATE_KEY,
            {"i": {"projectId": s.project_id, "name": "k", "scopes": ["wallets:write"]}},
            token=s.owner.token,
        )
    )["createApiKey"]["secret"]
    assert (await s.gql.error(SET, {"i": i}, token=key))["code"] == "FORBIDDEN"

    pid = ids.decode("project", s.project_id)
    assert await s.sql("SELECT 1 FROM auto_top_ups WHERE project_id = $1", pid) == []
    assert await s.sql("SELECT 1 FROM wallets WHERE project_id = $1 AND auto_top_up_below IS NOT NULL", pid) == []
    assert await s.sql("SELECT 1 FROM audit_log WHERE project_id = $1 AND action LIKE 'wallet.auto_top_up%'", pid) == []
    assert (await s.wallet())["autoTopUp"] is None
    # Turning it off takes an archived pack (only turning on checks what the pack buys).
    off = await s.set(enabled=False, creditPackId=archived)
    assert off["enabled"] is False and off["creditPackId"] == archived
    [audit] = await s.sql(
        "SELECT after FROM audit_log WHERE project_id = $1 AND action = 'wallet.auto_top_up.set'", pid
    )
    assert audit["after"] is not None


async def test_outcome_races_saves_and_debits_without_deadlock(shop: Shop) -> None:
    """The succeeded handler credits (wallet lock) before it locks the attempt, the order of the
    ledger's crossing insert and setAutoTopUp: all of them at once finish, and credit once."""
    s = shop
    await s.save_card()
    await s.set(threshold="300")
    await s.debit(300)  # 500 -> 200: wanted
    await top_up_intents.run_once(s.services.payments)
    paid = s.fake.last_event("payment_intent.succeeded")

    async def deliver_and_drain() -> None:
        r = await deliver(s.client, paid)
        assert r.status_code == 200, r.text
        await inbox.drain(s.services.payments)

    async def cross_again() -> dict[str, Any]:
        await s.credit(150)  # 200.. -> at or above 300 again, then a debit crosses while the top-up is pending
        return await s.debit(160)

    results = await asyncio.gather(
        *(deliver_and_drain() for _ in range(5)),
        *(
            s.gql(
                SET,
                {"i": {"walletId": s.wallet_id, "enabled": True, "threshold": "300", "creditPackId": s.pack_id}},
                token=s.owner.token,
            )
            for _ in range(5)
        ),
        *(cross_again() for _ in range(5)),
    )
    assert all(not (r or {}).get("errors") for r in results), [r for r in results if r and r.get("errors")]
    await inbox.drain(s.services.payments)
    rows = await s.sql(
        "SELECT count(*) AS n FROM ledger_transactions WHERE idempotency_key = $1",
        f"stripe:payment_intent:{paid['data']['object']['id']}",
    )
    assert rows[0]["n"] == 1
    assert (await s.wallet())["balance"] == str(200 + 500 + 5 * 150 - 5 * 160)
    assert next(a["status"] for a in await s.attempts()) == "SUCCEEDED"


async def test_processor_round_tops_up_and_a_refund_takes_the_credits_back(shop: Shop) -> None:
    """The app's webhook processor round starts the top-up; a refund of its charge reverses the
    top-up's credits like a Checkout pack's (the Payment names the intent and the charge)."""
    s = shop
    await s.save_card()
    await s.set(threshold="300")
    await s.debit(300)
    await s.services.webhook_processor.run_once()
    [call] = s.intents()
    assert call.params["metadata"]["ledgerx_wallet_id"] == s.wallet_id
    paid = s.fake.last_event("payment_intent.succeeded")
    await s.send(paid)
    assert (await s.wallet())["balance"] == "700"
    await s.send(s.fake.refund(paid["data"]["object"]["latest_charge"]))
    assert (await s.wallet())["balance"] == "200"
    [payment] = await s.sql(
        "SELECT status, amount_refunded, credits_reversed FROM payments WHERE stripe_payment_intent_id = $1",
        paid["data"]["object"]["id"],
    )
    assert (payment["status"], payment["amount_refunded"], payment["credits_reversed"]) == ("REFUNDED", 900, 500)


async def test_a_refund_or_dispute_of_the_top_up_charges_nothing_again(shop: Shop) -> None:
    """Taking the top-up's money back crosses the threshold again, but must not re-charge the card
    that was just refunded (or that its holder disputed)."""
    s = shop
    await s.save_card()
    await s.set(threshold="300")
    for taken_back in ("refund", "dispute"):
        await s.debit(int((await s.wallet())["balance"]) - 200)  # down to 200: a crossing
        await s.services.webhook_processor.run_once()
        paid = s.fake.last_event("payment_intent.succeeded")
        await s.send(paid)
        assert (await s.wallet())["balance"] == "700"
        intents = len(s.intents())
        charge = paid["data"]["object"]["latest_charge"]
        await s.send(s.fake.refund(charge) if taken_back == "refund" else s.fake.dispute(charge))
        assert (await s.wallet())["balance"] == "200", taken_back  # 700 -> 200: below the threshold
        await s.services.webhook_processor.run_once()
        assert len(s.intents()) == intents, f"the {taken_back} charged the card again"
        await s.credit(100)  # back to 300 (at the threshold): the next debit may cross again
