"""Auto top-up when Stripe's outcome event never comes, and wanted top-ups gone stale.

A PENDING attempt whose `payment_intent.*` event was lost is looked up at Stripe by the worker's
round once it is older than `RECOVER_AFTER` (the payments clock is moved, Stripe's fake answers
GET payment_intents/{id} with the intent as the tests set it): paid -> credited, invoiced and
recorded exactly as the webhook would (the event arriving afterwards changes nothing); declined ->
FAILED; undecided -> looked at again one interval later; Stripe failing -> the round goes on and
asks again. A WANTED attempt whose wallet was credited back to its threshold is skipped without
a PaymentIntent."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest

from ledgerx import ids
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.domain.payments import top_up_intents
from ledgerx.domain.payments.top_up_intents import LOST_AFTER, RECOVER_AFTER
from tests.test_auto_top_up import DECLINE, Shop, receiver, settings, shop, smtp
from tests.webhooks_out_receiver import Receiver

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
__all__ = ["receiver", "settings", "shop", "smtp"]  # the fixtures, used by the tests below

SECOND = dt.timedelta(seconds=1)


async def lost_top_up(s: Shop, receiver: Receiver) -> dict[str, Any]:
    """A card saved, a billing email and an endpoint (so mails and outbound events are written),
    then a crossing (500 -> 200 under 300) charged by the round: the attempt, PENDING with its
    intent, whose outcome event the tests never deliver.

    The session's database still holds other tests' in-flight top-ups, whose intents only their
    (stopped) fakes knew: parked out of the recovery's reach, so this test's rounds look at its
    own attempt whatever ran before (the round looks at CLAIM_LIMIT at most, oldest first)."""
    await s.sql(
        "UPDATE auto_top_up_attempts SET started_at = '9999-01-01' WHERE status = 'PENDING'"
        " AND stripe_payment_intent_id IS NOT NULL"
    )
    await s.save_card()
    await s.hook(receiver)
    await s.gql.ok(
        "mutation($i: UpdateBillingDetailsInput!) { updateBillingDetails(input: $i) { email } }",
        # An address of its own: a later test's mail sender drains the session's whole outbox.
        {"i": {"projectId": s.project_id, "email": f"billing-{uuid.uuid4().hex[:12]}@shop.test"}},
        token=s.owner.token,
    )
    await s.set(threshold="300")
    await s.debit(300)
    assert await top_up_intents.run_once(s.services.payments) == 1
    [attempt] = await s.attempts()
    assert attempt["status"] == "PENDING" and attempt["stripe_payment_intent_id"] is not None
    return dict(attempt)


def at(s: Shop, when: dt.datetime) -> None:
    s.services.payments.clock = lambda: when


def looks(s: Shop) -> int:
    """How often Stripe was asked about an intent."""
    return len(s.fake.calls_to("GET", "payment_intents/"))


async def state(s: Shop) -> dict[str, Any]:
    """Everything an outcome writes, for before/after comparisons."""
    pid = ids.decode("project", s.project_id)

    async def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await s.sql(sql, pid)]

    return {
        "wallet": await s.wallet(),
        "attempts": [dict(a) for a in await s.attempts()],
        "invoices": await rows(
            "SELECT id, status, number, amount_paid, grant_transaction_id FROM invoices"
            " WHERE project_id = $1 ORDER BY id"
        ),
        "payments": await rows("SELECT id, status, amount, transaction_id FROM payments WHERE project_id = $1"),
        "transactions": await rows("SELECT id FROM ledger_transactions WHERE project_id = $1 ORDER BY id"),
        "mails": await rows("SELECT kind, occurrence_key FROM mail_outbox WHERE project_id = $1 ORDER BY id"),
        "events": await rows("SELECT type FROM webhook_outbox WHERE project_id = $1 ORDER BY id"),
        "settings": await rows(
            "SELECT last_status, last_error, last_attempt_at FROM auto_top_ups WHERE project_id = $1"
        ),
    }


def event_types(st: dict[str, Any]) -> list[str]:
    return sorted(e[0] for e in st["events"])


async def test_lost_succeeded_event_is_recovered_once_and_the_late_event_changes_nothing(
    shop: Shop, receiver: Receiver
) -> None:
    s = shop
    attempt = await lost_top_up(s, receiver)
    intent_id = attempt["stripe_payment_intent_id"]
    before = await state(s)
    assert before["wallet"]["balance"] == "200"

    # Not overdue yet: nothing happens and Stripe is not asked.
    at(s, attempt["started_at"] + RECOVER_AFTER - SECOND)
    await top_up_intents.run_once(s.services.payments)
    assert looks(s) == 0
    assert await state(s) == before

    at(s, attempt["started_at"] + RECOVER_AFTER + SECOND)
    await top_up_intents.run_once(s.services.payments)
    [call] = s.fake.calls_to("GET", "payment_intents")
    assert call.path.strip("/") == f"payment_intents/{intent_id}"
    after = await state(s)
    assert after["wallet"]["balance"] == "700"
    assert after["wallet"]["autoTopUp"]["lastStatus"] == "SUCCEEDED"
    [done] = after["attempts"]
    assert done["status"] == "SUCCEEDED" and done["finished_at"] is not None
    [inv] = await s.sql("SELECT status, number, amount_paid, paid_at FROM invoices WHERE id = $1", done["invoice_id"])
    assert inv["status"] == "PAID" and inv["number"] is not None and inv["amount_paid"] == 900
    [payment] = await s.sql(
        "SELECT status, amount, credits, stripe_payment_intent_id FROM payments WHERE invoice_id = $1",
        done["invoice_id"],
    )
    assert (payment["status"], payment["amount"], payment["credits"]) == ("SUCCEEDED", 900, 500)
    assert payment["stripe_payment_intent_id"] == intent_id
    assert event_types(after) == sorted([*event_types(before), "invoice.paid", "payment.succeeded"])
    assert len(after["transactions"]) == len(before["transactions"]) + 1
    assert [m[0] for m in after["mails"] if m not in before["mails"]] == ["invoice_issued"]

    # A later round looks at nothing more; the lost event finally arriving changes nothing.
    at(s, attempt["started_at"] + 3 * RECOVER_AFTER)
    await top_up_intents.run_once(s.services.payments)
    assert looks(s) == 1
    paid = s.fake.last_event("payment_intent.succeeded")
    assert paid["data"]["object"]["id"] == intent_id
    await s.send(paid)
    await s.send(s.fake.event("payment_intent.succeeded", s.fake.get(intent_id), record=False))
    assert await state(s) == after


async def test_lost_decline_event_fails_the_top_up_once(shop: Shop, receiver: Receiver) -> None:
    s = shop
    attempt = await lost_top_up(s, receiver)
    intent_id = attempt["stripe_payment_intent_id"]
    # Stripe's side: the intent ended declined; its payment_intent.payment_failed never came.
    s.fake.get(intent_id).update(
        status="requires_payment_method",
        latest_charge=None,
        last_payment_error={"type": DECLINE["kind"], "code": DECLINE["code"], "message": DECLINE["message"]},
    )
    before = await state(s)
    at(s, attempt["started_at"] + RECOVER_AFTER + SECOND)
    await top_up_intents.run_once(s.services.payments)
    assert looks(s) == 1
    after = await state(s)
    assert after["wallet"]["balance"] == "200"
    top = after["wallet"]["autoTopUp"]
    assert top["lastStatus"] == "FAILED" and "declined" in top["lastError"]
    [failed] = after["attempts"]
    assert failed["status"] == "FAILED" and failed["stripe_payment_intent_id"] == intent_id
    [inv] = await s.sql("SELECT status, number FROM invoices WHERE id = $1", failed["invoice_id"])
    assert (inv["status"], inv["number"]) == ("VOID", None)
    assert [m for m in after["mails"] if m not in before["mails"]] == [("top_up_failed", f"top_up_failed:{intent_id}")]
    assert event_types(after) == sorted([*event_types(before), "invoice.payment_failed"])
    assert after["payments"] == before["payments"] and after["transactions"] == before["transactions"]

    # The failure event arriving after all: already recorded, nothing announced twice.
    late = s.fake.event("payment_intent.payment_failed", s.fake.get(intent_id), record=False)
    await s.send(late, late)
    assert await state(s) == after
    # The wallet is free again: a new crossing tops up.
    await s.credit(200)  # 400
    await s.debit(101)  # 299: a new crossing
    at(s, attempt["started_at"] + 2 * RECOVER_AFTER)
    await top_up_intents.run_once(s.services.payments)
    assert [a["status"] for a in await s.attempts()] == ["FAILED", "PENDING"]


async def test_canceled_intent_fails_with_its_reason(shop: Shop, receiver: Receiver) -> None:
    s = shop
    attempt = await lost_top_up(s, receiver)
    s.fake.get(attempt["stripe_payment_intent_id"]).update(status="canceled", cancellation_reason="abandoned")
    at(s, attempt["started_at"] + RECOVER_AFTER + SECOND)
    await top_up_intents.run_once(s.services.payments)
    [failed] = await s.attempts()
    assert failed["status"] == "FAILED" and failed["error"] == "the payment was canceled (abandoned)"


async def test_processing_intent_is_asked_once_per_interval(shop: Shop, receiver: Receiver) -> None:
    s = shop
    attempt = await lost_top_up(s, receiver)
    intent_id = attempt["stripe_payment_intent_id"]
    s.fake.get(intent_id)["status"] = "processing"
    before = await state(s)
    t0 = attempt["started_at"] + RECOVER_AFTER + SECOND
    for offset, asked in [(0, 1), (0, 1), (5 * 60, 1), (RECOVER_AFTER.total_seconds() - 1, 1)]:
        at(s, t0 + dt.timedelta(seconds=offset))
        await top_up_intents.run_once(s.services.payments)
        assert looks(s) == asked, offset
    assert await state(s) != before  # only started_at moved (the look's lease)
    assert [a["status"] for a in await s.attempts()] == ["PENDING"]
    assert (await state(s))["invoices"] == before["invoices"]

    at(s, t0 + RECOVER_AFTER + SECOND)
    await top_up_intents.run_once(s.services.payments)
    assert looks(s) == 2
    assert [a["status"] for a in await s.attempts()] == ["PENDING"]

    s.fake.get(intent_id)["status"] = "succeeded"  # paid at last; the event is lost too
    at(s, t0 + 2 * RECOVER_AFTER + 2 * SECOND)
    await top_up_intents.run_once(s.services.payments)
    assert looks(s) == 3
    assert [a["status"] for a in await s.attempts()] == ["SUCCEEDED"]
    assert (await s.wallet())["balance"] == "700"


async def test_stripe_failing_does_not_stop_the_round(shop: Shop, receiver: Receiver) -> None:
    s = shop
    attempt = await lost_top_up(s, receiver)
    t0 = attempt["started_at"] + RECOVER_AFTER + SECOND
    s.fake.fail_next("GET", "payment_intents", status=503, message="overloaded")
    at(s, t0)
    await s.services.webhook_processor.run_once()  # the app's round: no exception
    assert looks(s) == 1
    assert [a["status"] for a in await s.attempts()] == ["PENDING"]
    await top_up_intents.run_once(s.services.payments)  # at once: not again yet
    assert looks(s) == 1

    # Stripe is back a minute later: recovered.
    at(s, t0 + LOST_AFTER + SECOND)
    await top_up_intents.run_once(s.services.payments)
    assert looks(s) == 2
    assert [a["status"] for a in await s.attempts()] == ["SUCCEEDED"]
    assert (await s.wallet())["balance"] == "700"


async def test_a_refused_look_waits_a_whole_interval(shop: Shop, receiver: Receiver) -> None:
    s = shop
    attempt = await lost_top_up(s, receiver)
    t0 = attempt["started_at"] + RECOVER_AFTER + SECOND
    s.fake.fail_next("GET", "payment_intents", status=404, kind="invalid_request_error", code="resource_missing")
    at(s, t0)
    await top_up_intents.run_once(s.services.payments)
    at(s, t0 + LOST_AFTER + SECOND)
    await top_up_intents.run_once(s.services.payments)
    assert looks(s) == 1
    at(s, t0 + RECOVER_AFTER + SECOND)
    await top_up_intents.run_once(s.services.payments)
    assert looks(s) == 2
    assert [a["status"] for a in await s.attempts()] == ["SUCCEEDED"]


async def test_concurrent_rounds_recover_once(shop: Shop, receiver: Receiver) -> None:
    s = shop
    attempt = await lost_top_up(s, receiver)
    before = await state(s)
    at(s, attempt["started_at"] + RECOVER_AFTER + SECOND)
    await asyncio.gather(*(top_up_intents.run_once(s.services.payments) for _ in range(4)))
    assert looks(s) == 1
    after = await state(s)
    assert after["wallet"]["balance"] == "700"
    assert len(after["payments"]) == len(before["payments"]) + 1
    assert event_types(after) == sorted([*event_types(before), "invoice.paid", "payment.succeeded"])


async def test_a_round_and_the_late_event_at_once_credit_once(shop: Shop, receiver: Receiver) -> None:
    s = shop
    attempt = await lost_top_up(s, receiver)
    before = await state(s)
    at(s, attempt["started_at"] + RECOVER_AFTER + SECOND)
    paid = s.fake.last_event("payment_intent.succeeded")
    await asyncio.gather(top_up_intents.run_once(s.services.payments), s.send(paid), s.send(paid))
    after = await state(s)
    assert after["wallet"]["balance"] == "700"
    assert len(after["payments"]) == len(before["payments"]) + 1
    assert len(after["transactions"]) == len(before["transactions"]) + 1
    assert event_types(after) == sorted([*event_types(before), "invoice.paid", "payment.succeeded"])


async def test_wanted_top_up_credited_back_is_skipped_without_a_charge(shop: Shop) -> None:
    s = shop
    await s.save_card()
    await s.set(threshold="300")
    await s.debit(300)  # 500 -> 200: wanted
    await s.credit(100)  # 300: back at the threshold before the round
    await top_up_intents.run_once(s.services.payments)
    [skipped] = await s.attempts()
    assert skipped["status"] == "SKIPPED" and skipped["invoice_id"] is None
    assert "back at or above the threshold" in skipped["error"]
    assert s.intents() == []
    top = (await s.wallet())["autoTopUp"]
    assert top["lastStatus"] is None and top["lastAttemptAt"] is None  # no attempt was made
    pid = ids.decode("project", s.project_id)
    assert await s.sql("SELECT 1 FROM invoices WHERE project_id = $1 AND kind = 'TOP_UP'", pid) == []

    # The slot is free: the next crossing wants (and gets) a top-up.
    await s.debit(1)  # 300 -> 299
    await top_up_intents.run_once(s.services.payments)
    assert len(s.intents()) == 1
    assert [a["status"] for a in await s.attempts()] == ["SKIPPED", "PENDING"]


async def test_wanted_top_up_still_below_is_charged(shop: Shop) -> None:
    s = shop
    await s.save_card()
    await s.set(threshold="300")
    await s.debit(300)  # 500 -> 200
    await s.credit(99)  # 299: credited, but still below
    await top_up_intents.run_once(s.services.payments)
    assert len(s.intents()) == 1
    assert [a["status"] for a in await s.attempts()] == ["PENDING"]


async def test_credited_back_while_a_posting_holds_the_wallet_waits_a_round(shop: Shop) -> None:
    """Back up, but a posting holds the wallet's lock: the claim neither waits nor decides (a
    debit committing then could cross again); the next round skips it."""
    s = shop
    await s.save_card()
    await s.set(threshold="300")
    await s.debit(300)
    await s.credit(200)  # 400
    assert s.settings.database_url
    conn = await asyncpg.connect(asyncpg_dsn(s.settings.database_url))
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", ids.decode("wallet", s.wallet_id))
            await asyncio.wait_for(top_up_intents.run_once(s.services.payments), 10)
            assert [a["status"] for a in await s.attempts()] == ["WANTED"]
    finally:
        await conn.close()
    await top_up_intents.run_once(s.services.payments)
    assert [a["status"] for a in await s.attempts()] == ["SKIPPED"]
    assert s.intents() == []
